"""Pseudo-labels: the CSV's rows against margins computed by hand from the runs' cached embeddings, and the
pseudo-labelled test images in the training items only: never in a validation fold, the folds file or a gallery."""
import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.core.io import read_table
from pipeline.data.folds import PseudoItem, labelled, read_pseudo, split, write_folds
from pipeline.data.layouts import load_dataset
from pipeline.experiments.pseudo import GRID, pseudo_labels

from conftest import tiny_overrides


def _cfgs(tiny, runs):
    return [load_config(str(runs / f"{n}.yaml"), tiny_overrides(tiny, runs, "epochs=1")) for n in "ab"]


def _by_hand(cfgs):
    """(test ids, top-1 classes, top-1 scores, margins) of the two runs' summed cosines / 2, per-class max."""
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.retrieval.runsets import load_embeddings

    e = load_embeddings(cfgs, DEFAULTS, log=lambda *a: None)
    sims = sum(np.asarray(q, np.float64) @ np.asarray(g, np.float64).T
               for q, g in zip(e.test.arrays, e.gallery.arrays)) / len(cfgs)
    classes = sorted(set(e.gallery.labels))
    labels = np.array(e.gallery.labels)
    per_class = np.stack([sims[:, labels == c].max(1) for c in classes], 1)
    order = np.argsort(-per_class, 1, kind="stable")
    top1, top2 = np.take_along_axis(per_class, order[:, :2], 1).T
    return list(e.test.ids), [classes[i] for i in order[:, 0]], top1, top1 - top2


def _between(margins, near):
    """A threshold in the widest gap between sorted margins around `near`: no margin within float noise of it."""
    m = np.sort(margins)
    mids = [(m[i] + m[i + 1]) / 2 for i in range(len(m) - 1) if m[i + 1] - m[i] > 1e-4]
    return float(min(mids, key=lambda x: abs(x - near)))


def test_pseudo_rows_are_the_test_images_whose_margin_clears_t(trained, tmp_path, capsys):
    tiny, runs = trained
    cfgs, lines = _cfgs(tiny, runs), []
    truth_path = tiny / "data" / "test_truth.csv"
    first = pseudo_labels(cfgs, 0.0, tmp_path / "warm.csv", log=lambda *a: None)  # embeds the runs once
    ids, labels, top, margin = _by_hand(cfgs)
    assert first.kept == first.total == len(ids)  # every margin is >= 0
    t = _between(margin, np.median(margin))
    res = pseudo_labels(cfgs, t, tmp_path / "r1.csv", truth=truth_path, log=lines.append)
    keep = margin >= t
    assert 0 < keep.sum() < len(ids)
    rows = read_table(res.path)
    assert list(rows.columns) == ["image_id", "label", "margin", "score"]
    assert rows["image_id"].tolist() == [i for i, k in zip(ids, keep) if k]
    assert rows["label"].tolist() == [x for x, k in zip(labels, keep) if k]
    np.testing.assert_allclose(rows["margin"].astype(float), margin[keep], atol=2e-5)
    np.testing.assert_allclose(rows["score"].astype(float), top[keep], atol=2e-5)
    truth = dict(read_table(truth_path).values.tolist())
    right = np.array([truth[i] == x for i, x in zip(ids, labels)])
    assert (res.kept, res.total) == (keep.sum(), len(ids))
    assert res.precision == pytest.approx(right[keep].mean())
    table = res.table.set_index("threshold")
    assert set(table.index) == {*GRID, t}
    for g in GRID:  # a grid threshold within float noise of a margin may count it either way
        assert (margin >= g + 1e-5).sum() <= table.loc[g, "kept"] <= (margin >= g - 1e-5).sum()
    assert (tmp_path / "r1_quality.md").is_file()
    choices = json.loads((tmp_path / "r1.json").read_text())
    assert (choices["threshold"], choices["kept"], choices["configs"]) == (t, res.kept, ["a", "b"])
    assert lines[-1].startswith(f"pseudo-labels: {res.kept} of {len(ids)} test images with margin >= {t:g}")

    # the stage over the same library call (in this process: a subprocess costs seconds), and its default path
    from pipeline.cli import main

    assert main(["pseudo", str(runs / "a.yaml"), str(runs / "b.yaml"), "--threshold", str(t), "--overrides",
                 *tiny_overrides(tiny, runs, "epochs=1")]) == 0
    assert (runs / "pseudo" / "a+b.csv").read_text() == res.path.read_text()
    capsys.readouterr()
    assert main(["pseudo", str(runs / "a.yaml"), "--threshold", "-1", "--overrides", *tiny_overrides(tiny, runs)]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --threshold -1: give a margin >= 0 (mean-cosine units, "
                                                    "e.g. 0.05)"]

    # round 2: the pseudo images join the training items of every fold, never its validation items or the folds file
    over = tiny_overrides(tiny, tmp_path, f"pseudo={res.path}")
    said = []
    ds, train, val, _ = split(load_config("default", over), log=said.append)
    pseudo = {it.image_id: it for it in train if isinstance(it, PseudoItem)}
    assert list(pseudo) == rows["image_id"].tolist()
    assert [it.label for it in pseudo.values()] == rows["label"].tolist()
    assert all(it.path.parent.name == "test_images" for it in pseudo.values())
    assert labelled(train) == [it for it in train if it.image_id not in pseudo] and len(labelled(train)) < len(train)
    assert said == [f"pseudo-labels: {len(pseudo)} test images of {res.path} added to the {len(labelled(train))} "
                    "training images (never validated, never in a gallery)"]
    for fold in range(5):
        _, train_k, val_k, _ = split(load_config("default", over + [f"fold={fold}"]))
        assert not {it.image_id for it in val_k} & set(pseudo)
        assert set(pseudo) <= {it.image_id for it in train_k}
    folds = write_folds(ds, tmp_path / "folds.csv", n_folds=5, seed=1)
    assert not {r[0] for r in folds} & set(pseudo) and len(folds) == len(ds.train)


@pytest.mark.parametrize("text,needle", [
    (None, "file not found"),
    ("id,label\nx,y\n", "missing column(s) image_id"),
    ("image_id,label\nnot-a-test-image.jpg,{cls}\n", "is not a test image"),
    ("image_id,label\n{test},not-a-class\n", "is not a training class"),
    ("image_id,label\n{test},{cls}\n{test},{cls}\n", "listed twice"),
])
def test_bad_pseudo_files_are_one_line_errors(tiny_data, tmp_path, text, needle):
    ds = load_dataset(tiny_data / "data")
    path = tmp_path / "p.csv"
    if text is not None:
        path.write_text(text.format(test=ds.test[0].image_id, cls=ds.classes[0]))
    with pytest.raises(UserError) as e:
        read_pseudo(path, ds)
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg
    assert "./run.sh pseudo" in msg or "listed twice" in msg
