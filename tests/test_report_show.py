"""`./run.sh ensemble-report` (every subset's ensemble MAP@5) and `./run.sh show` (retrieval grid) on two tiny runs."""
import csv
import json

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, cli, md_lines, tiny_overrides


def _overrides(trained):
    tiny_data, runs = trained
    return tiny_overrides(tiny_data, runs, "epochs=1")


def _inputs(trained, names):
    """Per-model (val, gallery without the val rows) embeddings, their labels and the classes, in-process."""
    from pipeline.config import load_config
    from pipeline.data.layouts import load_dataset
    from pipeline.retrieval.embeddings import ensure_embeddings, load_split

    _, runs = trained
    cfgs = [load_config(str(runs / f"{n}.yaml"), _overrides(trained)) for n in names]
    dirs = [ensure_embeddings(c, log=lambda *a: None).dir for c in cfgs]
    vals = [load_split(d, "val") for d in dirs]
    gals = [load_split(d, "gallery") for d in dirs]
    keep = np.array([i not in set(vals[0].ids) for i in gals[0].ids])
    return dict(cfgs=cfgs, q=[np.asarray(v.array) for v in vals], g=[np.asarray(g.array)[keep] for g in gals],
                q_ids=vals[0].ids, q_labels=vals[0].labels, g_ids=[i for i, k in zip(gals[0].ids, keep) if k],
                g_labels=[lab for lab, k in zip(gals[0].labels, keep) if k],
                classes=load_dataset(cfgs[0]["data"], cfgs[0]).classes)


def _brute_force_map5(x):
    """MAP@5 by numpy in float64: summed cosines, per-class max, top 5 classes (ties: smaller class first)."""
    sims = sum(q.astype(np.float64) @ g.astype(np.float64).T for q, g in zip(x["q"], x["g"]))
    labels = np.array(x["g_labels"])
    present = sorted(set(x["g_labels"]))
    per_class = np.stack([sims[:, labels == c].max(1) for c in present], 1)
    total = 0.0
    for row, truth in zip(per_class, x["q_labels"]):
        top = [present[j] for j in sorted(range(len(present)), key=lambda j: (-row[j], j))[:5]]
        total += 1 / (top.index(truth) + 1) if truth in top else 0
    return total / len(x["q_labels"])


def test_ensemble_report_scores_every_subset(trained):
    from pipeline.inference.predict import map5
    from pipeline.retrieval.embeddings import EmbeddingSet

    _, runs = trained
    p = cli("ensemble-report", runs / "a.yaml", runs / "b.yaml", "--out", "ab", "--overrides", *_overrides(trained))
    assert p.returncode == 0, p.stderr
    assert "[1/3]" in p.stdout and "[3/3]" in p.stdout
    assert "| size | models | val MAP@5 | best of size |" in md_lines(p.stdout)
    out = runs / "ensembles" / "ab"
    for f in ("report.md", "report.csv", "report.json", "report.png"):
        assert (out / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    assert [r["models"] for r in rows] == [["a"], ["b"], ["a", "b"]] and [r["size"] for r in rows] == [1, 1, 2]
    # each row is the val MAP@5 `ensemble` computes for that subset (retrieval.map5 on the validation gallery)
    x = _inputs(trained, ["a", "b"])
    for r, subset in zip(rows, ([0], [1], [0, 1])):
        expected = map5(EmbeddingSet([x["q"][i] for i in subset], x["q_ids"], x["q_labels"]),
                        EmbeddingSet([x["g"][i] for i in subset], x["g_ids"], x["g_labels"]), x["classes"],
                        log=lambda *a: None)
        assert r["val_map5"] == expected, (r, expected)
    # ... and each row, the single models too, is the float64 brute force of its subset's embeddings
    for r, subset in zip(rows, ([0], [1], [0, 1])):
        sub = dict(x, q=[x["q"][i] for i in subset], g=[x["g"][i] for i in subset])
        assert r["val_map5"] == pytest.approx(_brute_force_map5(sub), abs=1e-12), (r, subset)
    # ... and what `./run.sh ensemble a b` reports for each model alone and for the pair
    p = cli("ensemble", runs / "a.yaml", runs / "b.yaml", "--out", "ens_ab", "--overrides", *_overrides(trained))
    assert p.returncode == 0, p.stderr
    scores = json.loads((runs / "ensembles" / "ens_ab" / "scores.json").read_text())
    if scores.get("submission"):
        (ROOT / scores["submission"]).unlink(missing_ok=True)
    assert [rows[0]["val_map5"], rows[1]["val_map5"]] == [scores["models"]["a"], scores["models"]["b"]]
    assert rows[2]["val_map5"] == scores["ensemble"]["val_map5"]
    # best of size: the higher single model (the first on a tie), and the only pair
    best_single = 0 if rows[0]["val_map5"] >= rows[1]["val_map5"] else 1
    assert [r["best_of_size"] for r in rows] == [best_single == 0, best_single == 1, True]
    table = [r for r in csv.DictReader(open(out / "report.csv"))]
    assert [(r["models"], r["best_of_size"]) for r in table] == [
        ("a", str(int(best_single == 0))), ("b", str(int(best_single == 1))), ("a+b", "1")]
    md = (out / "report.md").read_text()
    assert md.count("✓") == 2 and md.count("**") == 4
    assert f"| 2 | a + b | **{rows[2]['val_map5']:.4f}** | ✓ |" in md_lines(md)

    # --max-size 1: the single models only, same scores
    p = cli("ensemble-report", runs / "a.yaml", runs / "b.yaml", "--max-size", "1", "--out", "ab1",
            "--overrides", *_overrides(trained))
    assert p.returncode == 0, p.stderr
    rows1 = json.loads((runs / "ensembles" / "ab1" / "report.json").read_text())["rows"]
    assert [(r["models"], r["val_map5"]) for r in rows1] == [(r["models"], r["val_map5"]) for r in rows[:2]]
    assert "[2/2]" in p.stdout


def test_show_writes_grid_of_best_matches(trained, tmp_path):
    import matplotlib.image

    from pipeline.experiments.show import show
    from pipeline.inference.predict import predict
    from pipeline.reports.pictures import best_matches, pick_queries
    from pipeline.reports.plots import GRID_CELL_INCHES, GRID_DPI
    from pipeline.retrieval.embeddings import EmbeddingSet

    _, runs = trained
    p = cli("show", runs / "a.yaml", runs / "b.yaml", "--n", "3", "--seed", "0", "--overrides", *_overrides(trained))
    assert p.returncode == 0, p.stderr
    png = runs / "ensembles" / "a+b" / "show.png"
    h, w = matplotlib.image.imread(png).shape[:2]
    assert (h, w) == (round(3 * GRID_CELL_INCHES[1] * GRID_DPI), round(6 * GRID_CELL_INCHES[0] * GRID_DPI))

    x = _inputs(trained, ["a", "b"])
    # the picked gallery image of each predicted class is that class's most similar row (numpy, float64)
    res = show(x["cfgs"], n=4, seed=1, out=tmp_path / "s.png", log=lambda *a: None)
    assert (tmp_path / "s.png").is_file()
    picked = pick_queries(len(x["q_ids"]), 4, 1)
    assert res["queries"] == [x["q_ids"][i] for i in picked] and len(set(picked)) == 4
    sims = sum(q[picked].astype(np.float64) @ g.astype(np.float64).T for q, g in zip(x["q"], x["g"]))
    labels = np.array(x["g_labels"])
    for i in range(len(picked)):
        per_class = {c: sims[i, labels == c].max() for c in set(x["g_labels"])}
        expected = sorted(per_class, key=lambda c: (-per_class[c], c))[:5]
        assert res["classes"][i] == expected
        for c, gid, s in zip(res["classes"][i], res["gallery"][i], res["scores"][i]):
            rows = np.flatnonzero(labels == c)
            assert gid == x["g_ids"][rows[np.argmax(sims[i, rows])]]
            assert s == pytest.approx(per_class[c], abs=1e-4)
    # its classes are the ensemble's ranking (inference.predict) of those queries
    assert res["classes"] == predict([q[picked] for q in x["q"]], EmbeddingSet(x["g"], x["g_ids"], x["g_labels"]),
                                     x["classes"], log=lambda *a: None)

    # best_matches itself on small random data, against brute force (ties broken towards the smaller class)
    rng = np.random.default_rng(0)
    q, g = [rng.normal(size=(3, 4)) for _ in range(2)], [rng.normal(size=(40, 4)) for _ in range(2)]
    codes = rng.integers(0, 8, 40)
    cls, sc, rows = best_matches(q, g, codes, k=5, max_memory=64)  # 4 gallery rows per chunk
    S = q[0] @ g[0].T + q[1] @ g[1].T
    for i in range(3):
        best = {c: np.flatnonzero(codes == c)[np.argmax(S[i, codes == c])] for c in set(codes.tolist())}
        order = sorted(best, key=lambda c: (-S[i, best[c]], c))[:5]
        assert cls[i].tolist() == order and rows[i].tolist() == [best[c] for c in order]
        assert np.allclose(sc[i], S[i, rows[i]], atol=1e-5)


def test_first_n_without_seed():
    from pipeline.reports.pictures import pick_queries

    assert pick_queries(10, 3).tolist() == [0, 1, 2]
    assert pick_queries(2, 5).tolist() == [0, 1]
    a, b = pick_queries(50, 6, seed=7), pick_queries(50, 6, seed=7)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 6 and a.tolist() == sorted(a.tolist())


def test_bad_input(tmp_path):
    assert_one_line_error(cli("show", "nope_config"), "unknown config 'nope_config'")
    assert_one_line_error(cli("show", "demo_lite0", "--n", "0"), "--n 0")
    assert_one_line_error(cli("show", "demo_lite0", "--out", tmp_path / "x.jpg"), ".png")
    assert_one_line_error(cli("ensemble-report", "nope_config"), "unknown config 'nope_config'")
    assert_one_line_error(cli("ensemble-report", "demo_lite0", "demo_lite0"), "named twice")
    assert_one_line_error(cli("ensemble-report", "demo_lite0", "--max-size", "0"), "--max-size 0")
    many = []
    for i in range(13):
        (tmp_path / f"c{i}.yaml").write_text("# config\n")
        many.append(tmp_path / f"c{i}.yaml")
    assert_one_line_error(cli("ensemble-report", *many), "8191 subsets", "--max-size 6")
