"""Acceptance (issue 13): a Happywhale-style csv competition, its files as Kaggle ships them (train.csv
`image,individual_id` of bare file names, train_images/, test_images/, sample_submission.csv `image,predictions`
in an unsorted order), goes through folds -> train -> embed -> ensemble with csv keys only, and the submission
has the sample's header, ids and row order, 5 individual ids per row."""
import csv
import hashlib
import shutil

import pytest

from conftest import PYPATH, TINY, cli

KEYS = ["csv.label_column=individual_id", "csv.train_dir=train_images"]


def _as_happywhale(src, dst):
    """The embedded dataset rewritten in Happywhale's file layout; individual ids are hex like Happywhale's.
    Returns (sample ids in row order, {test image: its individual id}, the individual ids of train.csv)."""
    whale = {h.name: hashlib.sha1(h.name.encode()).hexdigest()[:12] for h in (src / "train_images").iterdir()}
    (dst / "train_images").mkdir(parents=True)
    rows = []
    for img in sorted((src / "train_images").glob("*/*.jpg")):
        shutil.copy(img, dst / "train_images" / img.name)
        rows.append(f"{img.name},{whale[img.parent.name]}\n")
    (dst / "train.csv").write_text("image,individual_id\n" + "".join(rows))
    shutil.copytree(src / "test_images", dst / "test_images")
    truth = {r["image_id"]: whale[r["hotel_id"]] for r in csv.DictReader(open(src / "test_truth.csv"))}
    order = sorted(truth, reverse=True)
    (dst / "sample_submission.csv").write_text("image,predictions\n"
                                               + "".join(f"{i},new_individual\n" for i in order))
    return order, truth, set(whale.values())


def test_happywhale_competition_end_to_end(tiny_data, tmp_path):
    from pipeline.cli import main
    from pipeline.retrieval.submission import score_submission

    data = tmp_path / "happywhale"
    order, truth, individuals = _as_happywhale(tiny_data / "data", data)
    assert order != sorted(order)
    folds, runs = tmp_path / "folds.csv", tmp_path / "runs"
    p = cli("folds", "--data", data, "--n-folds", "5", "--seed", "1", "--out", folds, *KEYS)
    assert p.returncode == 0, p.stderr
    (tmp_path / "hw.yaml").write_text("# test config\n")
    over = [f"data={data}", f"folds_file={folds}", f"runs_dir={runs}", *TINY, "epochs=1", *KEYS]
    for stage in ("train", "embed"):
        p = cli(stage, tmp_path / "hw.yaml", *over)
        assert p.returncode == 0, p.stdout + p.stderr
    p = cli("ensemble", tmp_path / "hw.yaml", "--out", "hw", "--overrides", *over, cwd=tmp_path, env=PYPATH)
    assert p.returncode == 0, p.stdout + p.stderr

    sub = tmp_path / "submissions" / "hw.csv"
    lines = sub.read_text().splitlines()
    assert lines[0] == "image,predictions"  # the sample's header, not image_id,hotel_id
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == order  # the sample's ids in its order
    for _, labels in rows:
        assert len(labels.split()) == 5 == len(set(labels.split())) and set(labels.split()) <= individuals
    assert main(["validate", str(sub), "--data", str(data), *KEYS]) == 0  # strict, with the sample's header
    truth_csv = tmp_path / "truth.csv"
    truth_csv.write_text("image,individual_id\n" + "".join(f"{i},{w}\n" for i, w in truth.items()))
    score, n, warning = score_submission(sub, truth_csv, label_column="individual_id")
    assert n == len(order) and warning is None
    # Happywhale's metric written out (Kaggle's MAP@5): per image 1/rank of its individual among the first 5
    # predictions, 0 if absent; the mean over the images
    ap = [1 / (labels.split()[:5].index(truth[image]) + 1) if truth[image] in labels.split()[:5] else 0.0
          for image, labels in rows]
    assert score == pytest.approx(sum(ap) / len(ap), abs=1e-12)
