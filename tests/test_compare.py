"""`./run.sh compare` on the tiny dataset: per-seed training, mean ± std table, reuse of finished runs."""
import csv
import json
import statistics

import numpy as np
import pytest
import torch
from test_evaluate import brute_metrics

from pipeline.config import load_config
from pipeline.data.folds import split
from pipeline.data.layouts import load_dataset

from conftest import assert_one_line_error, cli, tiny_overrides


def test_compare_two_recipes_over_seeds(tiny_data, tmp_path):
    (tmp_path / "arc.yaml").write_text("head: arcface\n")
    (tmp_path / "sup.yaml").write_text("head: supcon\nsampler: m_per_class\nm_per_class: {n: 2}\nneck: linear\n")
    args = ["compare", tmp_path / "arc.yaml", tmp_path / "sup.yaml", "--seeds", "2", "--out", "t",
            "--zero-shot", "test_efficientnet", "--k", "1,5", *tiny_overrides(tiny_data, tmp_path, "epochs=1")]
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "compare" / "t"
    for f in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (out / f).is_file(), f
    report = json.loads((out / "compare.json").read_text())
    assert [r["model"] for r in report["rows"]] == ["zero-shot test_efficientnet", "arc", "sup"]
    assert sorted((r["model"], r["seed"]) for r in report["runs"]) == [("arc", 1), ("arc", 2), ("sup", 1), ("sup", 2)]
    # the zero-shot row against the float64 brute force on its cached features (gallery.npy: the training images
    # in the dataset's order, val_fold0.npy: fold 0's validation images), queries against the gallery without them
    cfg = load_config(str(tmp_path / "arc.yaml"), tiny_overrides(tiny_data, tmp_path, "epochs=1"))
    _, _, val_items, classes = split(cfg)
    [cache] = (tmp_path / "zero-shot" / "test_efficientnet").iterdir()
    g, q = (np.load(cache / f"{f}.npy").astype(np.float64) for f in ("gallery", "val_fold0"))
    everything = load_dataset(tiny_data / "data").train
    assert len(g) == len(everything) and len(q) == len(val_items) > 0
    val_ids = {it.image_id for it in val_items}
    keep = np.array([it.image_id not in val_ids for it in everything])
    want = brute_metrics(q, g[keep], [it.label for it in val_items],
                         [it.label for it, k in zip(everything, keep) if k], classes, [1, 5])
    zero = report["rows"][0]
    assert {k: zero[f"{k}_mean"] for k in want} == pytest.approx(want, abs=1e-12)
    assert all(zero[f"{k}_std"] == 0 for k in want)
    # the table's mean and std are those of the per-seed runs
    for entry in report["rows"][1:]:
        vals = [r["map@5"] for r in report["runs"] if r["model"] == entry["model"]]
        assert [entry["map@5_mean"], entry["map@5_std"]] == [statistics.mean(vals), statistics.stdev(vals)]
        stats = {"mAP@1", "mAP@5", "acc@1", "precision@5", "recall@5", "train_seconds", "images_per_sec"}
        assert {f"{k}_{s}" for k in stats for s in ("mean", "std")} <= set(entry)
    # each seed is its own run: other initialisation, other weights
    a, b = (torch.load(out / f"seed{s}" / "arc" / "fold0" / "best.pt", weights_only=True)["model"] for s in (1, 2))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert [r["model"] for r in rows] == ["zero-shot test_efficientnet", "arc", "sup"]
    # a second call reuses the finished runs (no training)
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("trained already") == 4, again.stdout


def test_compare_errors(tiny_data, tmp_path):
    assert_one_line_error(cli("compare", "demo_lite0", "--seeds", "0"), "--seeds 0")
    assert_one_line_error(cli("compare", "demo_lite0", "--metrics", "nope"), "nope")
    assert_one_line_error(cli("compare", "demo_lite0", "demo_lite0"), "named twice")
