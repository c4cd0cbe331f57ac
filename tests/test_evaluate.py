"""The evaluate stage: top-k search and leave-one-out class MAP@5 against brute force; metrics of a tiny trained
run (every column, leave-one-out too, against a float64 brute force from its cached embeddings; map@5 = ensemble's
val MAP@5), the zero-shot row, the query/gallery layout, errors."""
import csv
import json

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.experiments.evaluate import evaluate_runs, parse_ks, parse_metrics
from pipeline.experiments.zero_shot import zero_shot_row
from pipeline.retrieval.knn import nearest
from pipeline.retrieval.metrics import class_map5_leave_one_out, map_at_k

from conftest import assert_one_line_error, cli, copy_runs, md_lines, tiny_overrides


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def read_embeddings(folder, stem):
    """(float64 array, ids, labels) of a cached <stem>.npy / <stem>.csv, read with numpy and csv only."""
    rows = list(csv.DictReader(open(folder / f"{stem}.csv")))
    return np.load(folder / f"{stem}.npy").astype(np.float64), [r["image_id"] for r in rows], [r["label"] for r in rows]


def brute_metrics(q, g, q_labels, g_labels, classes, ks, own=None):
    """Every evaluate column by numpy in float64, written out from the metrics' definitions: cosine matrix, gallery
    rows ranked by a stable argsort (ties: smaller row), own[i] the row query i may not find (leave-one-out).
    map@5: Kaggle's class MAP@5 (classes by their best row, ties to the smaller class in `classes`, 1/rank of
    the true class in the top 5); mAP@k: 1/min(k, M_q) * sum_{i<=k} P@i rel_i (0 where M_q = 0); acc@1;
    precision@k = hits in the top k / k; recall@k = any hit in the top k."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    S = q @ g.T
    if own is not None:
        S[np.arange(len(q)), own] = -np.inf
    ql, gl = np.asarray(q_labels, object), np.asarray(g_labels, object)
    code = {c: i for i, c in enumerate(classes)}
    total = 0.0
    for i in range(len(q)):
        best = {}
        for j in np.flatnonzero(np.isfinite(S[i])):
            best[gl[j]] = max(best.get(gl[j], -np.inf), S[i, j])
        top = sorted(best, key=lambda c: (-best[c], code[c]))[:5]
        total += 1 / (top.index(ql[i]) + 1) if ql[i] in top else 0.0
    out = {"map@5": total / len(q)}
    order = np.argsort(-S, axis=1, kind="stable")
    rel = (gl[order] == ql[:, None]) & np.isfinite(np.take_along_axis(S, order, 1))
    m = np.array([(gl == x).sum() - (own is not None) for x in ql], np.float64)
    out["acc@1"] = float(rel[:, 0].mean())
    for k in ks:
        hits = rel[:, :k].astype(np.float64)
        prec_at_i = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
        ap = [(prec_at_i[i] * hits[i]).sum() / min(k, m[i]) if m[i] > 0 else 0.0 for i in range(len(q))]
        out[f"mAP@{k}"] = float(np.mean(ap))
        out[f"precision@{k}"] = float((hits.sum(1) / k).mean())
        out[f"recall@{k}"] = float(hits.any(1).mean())
    return out


@pytest.mark.parametrize("max_memory", [1, 3_000, 2 << 30])  # one query x one gallery row at a time .. all at once
@pytest.mark.parametrize("loo", [False, True])
def test_nearest_equals_brute_force(loo, max_memory):
    rng = np.random.default_rng(0)
    g = _unit(rng, 113)
    q = g if loo else _unit(rng, 37)
    own = np.arange(113) if loo else None
    idx, sc = nearest(q, g, 10, max_memory=max_memory, exclude=own)
    S = q.astype(np.float64) @ g.astype(np.float64).T
    if loo:
        np.fill_diagonal(S, -np.inf)
    want = np.argsort(-S, axis=1, kind="stable")[:, :10]
    assert idx.shape == (len(q), 10) and (idx == want).all()
    assert np.allclose(sc, np.take_along_axis(S, want, 1), atol=1e-5)
    if loo:
        assert (idx != np.arange(113)[:, None]).all()
    # k beyond the gallery: every other row, best first
    idx, _ = nearest(g[:4], g[:4], 10, exclude=own[:4] if loo else None)
    assert idx.shape == (4, 3 if loo else 4)


def test_nearest_exclude_skips_own_row():
    # queries that are gallery rows 20..49 (their own rows skipped) and one outside query (-1: nothing skipped)
    rng = np.random.default_rng(2)
    g = _unit(rng, 80)
    q = np.concatenate([g[20:50], _unit(rng, 1)])
    own = np.r_[np.arange(20, 50), -1]
    idx, _ = nearest(q, g, 5, max_memory=80 * 16 * 4 + 3000, exclude=own)
    S = q.astype(np.float64) @ g.astype(np.float64).T
    S[np.arange(30), own[:30]] = -np.inf
    assert (idx == np.argsort(-S, axis=1, kind="stable")[:, :5]).all()
    assert (idx[:30] != own[:30, None]).all() and idx[30, 0] == np.argmax(S[30])
    with pytest.raises(ValueError):
        nearest(q, g, 5, exclude=own[:3])


def test_class_map5_leave_one_out_equals_brute_force():
    rng = np.random.default_rng(1)
    emb = _unit(rng, 60, d=8)
    labels = [f"c{x}" for x in rng.integers(0, 12, 60)]
    S = emb.astype(np.float64) @ emb.astype(np.float64).T
    np.fill_diagonal(S, -np.inf)
    classes = sorted(set(labels))
    lab = np.array(labels)
    preds = []
    for row in S:
        best = [(-row[lab == c].max(), i) for i, c in enumerate(classes) if np.isfinite(row[lab == c].max())]
        preds.append([classes[i] for _, i in sorted(best)[:5]])
    assert class_map5_leave_one_out(emb, labels, max_memory=60 * 8 * 4 + 2000) == pytest.approx(
        map_at_k(preds, labels, k=5))


def test_parse_errors():
    assert parse_metrics("map@5, ACC@1,map@5") == ["map@5", "acc@1"]
    assert parse_ks("10,1,5,1") == [10, 1, 5]
    for bad in ("map@6", "", "acc@1,bogus"):
        with pytest.raises(UserError, match="--metrics"):
            parse_metrics(bad)
    for bad in ("0", "a,b", "", "1,-5", "1.5"):
        with pytest.raises(UserError, match="--k"):
            parse_ks(bad)


@pytest.fixture(scope="module")
def trained(trained, tmp_path_factory):
    """The session's run a (one epoch), copied into this module's own runs folder."""
    tiny_data, _ = trained
    return tiny_data, copy_runs(trained, tmp_path_factory.mktemp("runs"))


def _cfg(tiny_data, runs, name="a"):
    from pipeline.config import load_config

    return load_config(str(runs / f"{name}.yaml"), tiny_overrides(tiny_data, runs, "epochs=1"))


def test_map5_equals_ensemble_and_columns(trained, tmp_path, monkeypatch):
    from pipeline.experiments.ensemble import ensemble

    tiny_data, runs = trained
    cfg = _cfg(tiny_data, runs)
    quiet = lambda *a: None
    [row] = evaluate_runs([cfg], parse_metrics("map@5,map@k,acc@1,precision@k,recall@k"), [1, 5], log=quiet)
    assert list(row) == ["model", "map@5", "mAP@1", "mAP@5", "acc@1", "precision@1", "precision@5", "recall@1",
                         "recall@5"]
    assert row["acc@1"] == row["precision@1"] == row["recall@1"] == row["mAP@1"]
    # every column against the float64 brute force on the run's cached embeddings: the validation images against
    # the training images without them
    emb = runs / "a" / "fold0" / "embeddings"
    q, q_ids, q_labels = read_embeddings(emb, "val")
    g, g_ids, g_labels = read_embeddings(emb, "gallery")
    keep = np.array([i not in set(q_ids) for i in g_ids])
    g_labels = [lab for lab, k in zip(g_labels, keep) if k]
    classes = sorted(set(g_labels) | set(q_labels))
    want = brute_metrics(q, g[keep], q_labels, g_labels, classes, [1, 5])
    assert {k: v for k, v in row.items() if k != "model"} == pytest.approx(
        {k: want[k] for k in row if k != "model"}, abs=1e-12)
    monkeypatch.chdir(tmp_path)  # ensemble writes submissions/ under the working directory
    assert row["map@5"] == pytest.approx(ensemble([cfg], "e", log=quiet)["models"]["a"], abs=1e-12)
    # leave-one-out: the validation images against each other, each query's own row skipped
    [loo] = evaluate_runs([cfg], ["map@5", "recall@k"], [5], leave_one_out=True, log=quiet)
    assert list(loo) == ["model", "map@5", "recall@5"]
    want = brute_metrics(q, q, q_labels, q_labels, classes, [5], own=np.arange(len(q)))
    assert [loo["map@5"], loo["recall@5"]] == pytest.approx([want["map@5"], want["recall@5"]], abs=1e-12)
    with pytest.raises(UserError, match="unlabelled"):  # the synthetic Hotel-ID test images have no labels
        evaluate_runs([cfg], ["acc@1"], [1], queries="test", log=quiet)


def test_evaluate_cli_writes_report(trained):
    tiny_data, runs = trained
    p = cli("evaluate", runs / "a.yaml", "--metrics", "map@5,map@k,acc@1", "--k", "1,5",
            *tiny_overrides(tiny_data, runs, "epochs=1"))
    assert p.returncode == 0, p.stderr
    assert "| model | map@5 | mAP@1 | mAP@5 | acc@1 |" in md_lines(p.stdout)
    out = runs / "evaluate" / "a"
    report = json.loads((out / "metrics.json").read_text())
    assert report["rows"][0]["model"] == "a" and report["ks"] == [1, 5] and not report["leave_one_out"]
    assert (out / "metrics.md").read_text() in p.stdout
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[0]["map@5"]) == pytest.approx(report["rows"][0]["map@5"])
    assert not list(out.glob(".*.tmp"))


def test_evaluate_cli_zero_shot_and_errors(trained):
    tiny_data, runs = trained
    over = tiny_overrides(tiny_data, runs, "epochs=1")
    p = cli("evaluate", "--zero-shot", "test_efficientnet", "--metrics", "map@5,acc@1", *over)
    assert p.returncode == 0, p.stderr
    assert "| zero-shot test_efficientnet |" in md_lines(p.stdout)
    rows = json.loads((runs / "evaluate" / "zero-shot-test_efficientnet" / "metrics.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["zero-shot test_efficientnet"] and set(rows[0]) == {"model", "map@5",
                                                                                                "acc@1"}
    assert_one_line_error(cli("evaluate", runs / "a.yaml", "--metrics", "map@5,ndcg", *over), "ndcg", "--metrics")
    assert_one_line_error(cli("evaluate", runs / "a.yaml", "--k", "0", *over), "--k")
    (runs / "untrained.yaml").write_text("seed: 9\n")
    assert_one_line_error(cli("evaluate", runs / "untrained.yaml", *over), "not found", "train")


def test_zero_shot_api_cache_and_gem(trained):
    import shutil

    tiny_data, runs = trained
    cfg = _cfg(tiny_data, runs)
    cache = runs / "zero-shot" / "test_efficientnet" / "32"
    shutil.rmtree(cache, ignore_errors=True)  # the CLI test may have filled it
    row = zero_shot_row(cfg, "test_efficientnet", ["map@5", "map@k"], [1, 5], leave_one_out=True,
                        log=lambda *a: None)
    assert row["model"] == "zero-shot test_efficientnet" and set(row) == {"model", "map@5", "mAP@1", "mAP@5"}
    # evaluate_runs puts the zero-shot row first; its features come from the cache (same seed: same random init)
    logs = []
    rows = evaluate_runs([cfg], ["acc@1"], [1], zero_shot="test_efficientnet", log=logs.append)
    assert [r["model"] for r in rows] == ["zero-shot test_efficientnet", "a"]
    assert sum("embedded zero-shot gallery" in m for m in logs) == 1 and not any("val_fold0:" in m for m in logs)
    assert {p.name for p in cache.iterdir()} == {"gallery.npy", "gallery.json", "val_fold0.npy", "val_fold0.json"}
    logs.clear()
    again = evaluate_runs([cfg], ["acc@1"], [1], zero_shot="test_efficientnet", log=logs.append)
    assert again == rows and not any("embedded" in m for m in logs)
    # gem pooling (create_backbone leaves the maps unpooled) is a new cache key: recomputed, still a row
    logs.clear()
    gem = zero_shot_row(dict(cfg, pooling="gem"), "test_efficientnet", ["acc@1"], [1], log=logs.append)
    assert set(gem) == {"model", "acc@1"} and any("embedded zero-shot gallery" in m for m in logs)


def test_query_gallery_train_and_evaluate(tmp_path):
    from test_data import make_query_gallery

    from pipeline.config import load_config
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset

    data = make_query_gallery(tmp_path / "qg", classes=3, gallery=4, queries=2)
    write_folds(load_dataset(data), tmp_path / "folds.csv", n_folds=2, seed=1)
    runs = tmp_path / "runs"
    over = [f"data={data}", f"folds_file={tmp_path / 'folds.csv'}", f"runs_dir={runs}"]
    from conftest import TINY

    (tmp_path / "qg.yaml").write_text("epochs: 1\n")
    over += [*TINY, "epochs=1", "batch_size=4"]  # 6 training images in fold 0's split
    p = cli("train", tmp_path / "qg.yaml", *over)
    assert p.returncode == 0, p.stderr
    cfg = load_config(str(tmp_path / "qg.yaml"), over)
    quiet = lambda *a: None
    [row] = evaluate_runs([cfg], ["map@5", "acc@1", "precision@k"], [1, 3], queries="test", log=quiet)
    assert set(row) == {"model", "map@5", "acc@1", "precision@1", "precision@3"}
    emb = runs / "qg" / "fold0" / "embeddings"
    assert [r["label"] for r in csv.DictReader(open(emb / "test.csv"))] == ["c0", "c0", "c1", "c1", "c2", "c2"]
    zs = zero_shot_row(cfg, "test_efficientnet", ["acc@1"], [1], queries="test", log=quiet)
    assert set(zs) == {"model", "acc@1"}
