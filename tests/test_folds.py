"""Every fold: train --folds (resumable fold by fold), evaluate --oof against a brute-force recomputation, ensemble
--folds (out-of-fold scores, a test submission from every fold model) and kernel --from-report (the best subset of
an ensemble-report, with its folds and tricks). The session's tiny runs a and b (fold 0) get their fold 1 here."""
import csv
import json

import numpy as np
import pytest

from conftest import cli, tiny_overrides


@pytest.fixture(scope="module")
def folds01(trained):
    """The session runs a and b on folds 0 and 1: (tiny_data, runs dir, the overrides, the train --resume output)."""
    tiny, runs = trained
    ov = tiny_overrides(tiny, runs, "epochs=1")
    # a: fold 0 is the session's (finished: skipped), fold 1 is trained now
    p = cli("train", runs / "a.yaml", "--folds", "0-1", "--resume", *ov)
    assert p.returncode == 0, p.stdout + p.stderr
    p2 = cli("train", runs / "b.yaml", "--folds", "1", *ov)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    return tiny, runs, ov, p.stdout


def _main(capsys, *args):
    from pipeline.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_folds_resumes_fold_by_fold(folds01, capsys):
    import torch

    tiny, runs, ov, first = folds01
    assert "a fold 0 (1/2 of folds 0-1): done (1/1 epochs" in first and "skipped" in first
    assert "a fold 1 (2/2 of folds 0-1): training" in first and first.count("epoch 1/1:") == 1, first
    lasts = [runs / "a" / f"fold{k}" / "last.pt" for k in (0, 1)]
    assert [torch.load(p, weights_only=True)["progress"]["epoch"] for p in lasts] == [1, 1]
    mtimes = [p.stat().st_mtime_ns for p in lasts]
    code, out, err = _main(capsys, "train", runs / "a.yaml", "--folds", "0-1", "--resume", *ov)
    assert code == 0 and out.count("skipped") == 2 and "epoch 1/1:" not in out, out + err
    assert [p.stat().st_mtime_ns for p in lasts] == mtimes
    code, out, err = _main(capsys, "train", runs / "a.yaml", "--folds", "0,7", *ov)
    assert code == 2 and "fold 7 is not in" in err and "its folds: 0-4" in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):  # argparse: --fold and --folds are exclusive
        _main(capsys, "train", runs / "a.yaml", "--fold", "0", "--folds", "0-1", *ov)
    assert "not allowed with argument" in capsys.readouterr().err


def test_oof_equals_brute_force(folds01, capsys):
    from pipeline.data.layouts import load_dataset
    from pipeline.retrieval.embeddings import load_split

    tiny, runs, ov, _ = folds01
    code, out, err = _main(capsys, "evaluate", runs / "a.yaml", runs / "b.yaml", "--oof", "--folds", "0-1",
                           "--out", "oof", *ov)
    assert code == 0, err
    rows = {r["model"]: r for r in json.loads((runs / "evaluate" / "oof" / "metrics.json").read_text())["rows"]}
    assert list(rows) == ["a/fold0", "a/fold1", "a out-of-fold", "b/fold0", "b/fold1", "b out-of-fold"]
    classes = load_dataset(tiny / "data").classes
    for name in ("a", "b"):
        aps = []
        for k in (0, 1):
            emb = runs / name / f"fold{k}" / "embeddings"
            q, g = load_split(emb, "val"), load_split(emb, "gallery")
            fold_aps = _brute_force_aps([(q, g)], classes)
            assert rows[f"{name}/fold{k}"]["map@5"] == pytest.approx(np.mean(fold_aps), abs=1e-12)
            assert rows[f"{name}/fold{k}"]["queries"] == len(q)
            aps += fold_aps
        assert rows[f"{name} out-of-fold"]["map@5"] == pytest.approx(np.mean(aps), abs=1e-12)
        assert rows[f"{name} out-of-fold"]["queries"] == len(aps)


def _brute_force_aps(models, classes):
    """Per query AP@5 by hand: summed cosines of the models' (queries, gallery) to the gallery without the queries,
    per-class max, top 5 classes (ties: the earlier class)."""
    q_ids, labels = models[0][0].ids, models[0][0].labels
    keep = np.array([i not in set(q_ids) for i in models[0][1].ids])
    g_labels = np.array(models[0][1].labels, object)[keep]
    sims = sum(np.asarray(q.array, np.float64) @ np.asarray(g.array, np.float64)[keep].T for q, g in models)
    aps = []
    for row, truth in zip(sims, labels):
        score = {c: row[g_labels == c].max() for c in classes if (g_labels == c).any()}
        top = sorted(score, key=lambda c: (-score[c], classes.index(c)))[:5]
        aps.append(1 / (top.index(truth) + 1) if truth in top else 0.0)
    return aps


def test_ensemble_of_fold_models(folds01, capsys, tmp_path, monkeypatch):
    from pipeline.data.layouts import load_dataset
    from pipeline.retrieval.embeddings import load_split

    tiny, runs, ov, _ = folds01
    monkeypatch.chdir(tmp_path)  # submissions/ goes here
    code, out, err = _main(capsys, "ensemble", runs / "a.yaml", runs / "b.yaml", "--folds", "0-1", "--out", "cv", *ov)
    assert code == 0, err
    report = json.loads((runs / "ensembles" / "cv" / "scores.json").read_text())
    assert list(report["models"]) == ["a/fold0", "a/fold1", "b/fold0", "b/fold1"] and report["folds"] == [0, 1]
    classes = load_dataset(tiny / "data").classes
    emb = {(n, k): runs / n / f"fold{k}" / "embeddings" for n in "ab" for k in (0, 1)}
    aps = [ap for k in (0, 1) for ap in _brute_force_aps([(load_split(emb[n, k], "val"), load_split(emb[n, k],
                                                                                                     "gallery"))
                                                          for n in "ab"], classes)]
    assert report["ensemble"]["val_map5"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert "ranked with 4 models: a/fold0 a/fold1 b/fold0 b/fold1" in out
    # the test images ranked with all four fold models: summed cosines against every training image
    gal = [load_split(emb[key], "gallery") for key in sorted(emb)]
    test = [load_split(emb[key], "test") for key in sorted(emb)]
    sims = sum(np.asarray(t.array, np.float64) @ np.asarray(g.array, np.float64).T for t, g in zip(test, gal))
    g_labels = np.array(gal[0].labels, object)
    want = {}
    for i, row in zip(test[0].ids, sims):
        score = {c: row[g_labels == c].max() for c in classes}
        want[i] = " ".join(sorted(score, key=lambda c: (-score[c], classes.index(c)))[:5])
    rows = list(csv.reader(open(tmp_path / report["submission"])))
    assert {r[0]: r[1] for r in rows[1:]} == want


def test_kernel_from_report_takes_the_best_subset(folds01, capsys, tmp_path, monkeypatch):
    tiny, runs, ov, _ = folds01
    monkeypatch.chdir(tmp_path)
    code, out, err = _main(capsys, "ensemble-report", runs / "a.yaml", runs / "b.yaml", "--folds", "0-1", "--dba",
                           "2,1", "--out", "rep", *ov)
    assert code == 0, err
    report = runs / "ensembles" / "rep"
    rows = json.loads((report / "report.json").read_text())["rows"]
    best = max(rows, key=lambda r: r["val_map5"])
    code, out, err = _main(capsys, "kernel", "rep-kernel", "--from-report", report, "--owner", "tester",
                           "--no-verify", "--wheels")
    assert code == 0, err
    kernel = json.loads((tmp_path / "kernels" / "rep-kernel" / "models" / "kernel.json").read_text())
    assert kernel["models"] == [f"{m}-fold{k}" for m in best["models"] for k in (0, 1)]
    assert kernel["tricks"]["dba"] == [2, 1.0]
    # bad uses: one-line errors
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "best.json").write_text(json.dumps({"version": 0}))
    for args, needle in (([], "give --models"), (["--from-report", tmp_path / "none"], "best.json not found"),
                         (["--from-report", tmp_path / "old"], "version 0"),
                         (["--from-report", report, "--fold", "1"], "drop --fold")):
        code, out, err = _main(capsys, "kernel", "rep-kernel", "--owner", "tester", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
