"""The inference-trick options of `ensemble` and `evaluate` (pipeline/inference/tricks.py's trick table) on two
tiny trained runs: the flags reach the right cached embeddings and the ranking, --ablate writes its table (every row
equal to a float64 brute force of its files and trick), bad flags are one-line errors; and every entry of the table on
its own."""
import csv
import json
import re

import numpy as np
import pytest
from test_evaluate import read_embeddings

from conftest import assert_one_line_error, cli, tiny_overrides

# Each `evaluate --ablate` row (label: PCA's dimension as {dim}) -> the cached files its ensemble ranks with (the
# file stems retrieval/embedding_tricks.py documents) and its ranking-time trick, for the brute force below
ABLATION_REFERENCES = {
    "baseline": {},
    "flip TTA": dict(query="val.flip", gallery="gallery.flip"),
    "multi-crop 5 (red crops dropped)": dict(query="val.mc5"),
    "multi-crop 9 (red crops dropped)": dict(query="val.mc9"),
    "gallery with the val pipeline": dict(gallery="gallery.galval"),
    "class score = sum of top-3": dict(agg_k=3),
    "query expansion k=5 α=3": dict(qe=(5, 3.0)),
    "database augmentation k=5 α=3": dict(dba=(5, 3.0)),
    "PCA {dim}": dict(pca="dim"),
    "PCA {dim} + whitening": dict(pca="dim", whiten=True),
    "occlusion fill: blendflip": dict(query="val.fill-blendflip"),
    "occlusion fill: inpaint": dict(query="val.fill-inpaint"),
    "rotation TTA (best of 4 turns)": dict(views=("val.rot1", "val.rot2", "val.rot3")),
    "upright queries (rotation classifier)": dict(query="val.upright"),
    "multi-scale queries 0.75/1/1.25": dict(query="val.ms0.75-1-1.25"),
    "multi-scale queries and gallery 0.75/1/1.25": dict(query="val.ms0.75-1-1.25", gallery="gallery.ms0.75-1-1.25"),
    "kNN 0.5 + class weights 0.5": dict(alpha=0.5),
    "class weights only (logits)": dict(alpha=0.0),
}


def _l2(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _augment(x, rows, n, alpha, skip=None):
    """x + sum over the n rows most similar to x (stable order: ties to the earlier row; `skip` left out) of
    max(cos, 0)^alpha * row."""
    s = rows @ x
    best = [j for j in np.argsort(-s, kind="stable") if j != skip][:n]
    return x + sum((max(s[j], 0.0) ** alpha * rows[j] for j in best), np.zeros_like(x))


def brute_top5(views, gallery, g_labels, classes, agg_k=0, dba=(0, 3.0), qe=(0, 3.0), pca=0, whiten=False,
               centers=None, alpha=1.0):
    """Top-5 class names per query by numpy in float64, each trick written out from its definition. views: per
    view of the queries (rotation TTA: one per turn) one array per model; gallery: one array per model.
    Row score: the sum of the models' cosines, or with PCA / DBA / QE their mean (the models' blocks concatenated,
    each scaled by sqrt(1/models)); then PCA fitted on the gallery (eigenvectors of the centred scatter, top `pca`,
    whitened by sqrt(variance + 1e-12)), both sides projected and L2-normalised; DBA (each gallery row plus its
    k-1 nearest other rows of its class, weighted max(cos, 0)^alpha, normalised); QE (each query plus the min(k,
    n_c) rows of its first top-1 class nearest to it, weighted the same). Class score: its best row, or the sum of
    its agg_k best; alpha < 1: alpha x that + (1 - alpha) x the sum over models of the cosine to the class's best
    weight row (centers[m] = (labels, (C, K, D) array)), classes with gallery rows and a center in every model.
    Views: each class scored by its best view. Top 5: score descending, ties to the earlier class in `classes`."""
    w = 1 / len(gallery) if (pca or dba[0] or qe[0]) else 1.0
    G = np.concatenate([np.sqrt(w) * a for a in gallery], 1)
    Qs = [np.concatenate([np.sqrt(w) * a for a in v], 1) for v in views]
    codes = np.array([classes.index(lab) for lab in g_labels])
    if pca:
        mean = G.mean(0)
        ev, V = np.linalg.eigh((G - mean).T @ (G - mean))
        ev, V = ev[::-1][:pca], V[:, ::-1][:, :pca]
        if whiten:
            V = V / np.sqrt(ev / (len(G) - 1) + 1e-12)
        G, Qs = _l2((G - mean) @ V), [_l2((q - mean) @ V) for q in Qs]
    if dba[0]:
        members = [np.flatnonzero(codes == c) for c in codes]  # per row: the rows of its class, in order
        G = _l2(np.stack([_augment(G[i], G[m], dba[0] - 1, dba[1], skip=int(np.searchsorted(m, i)))
                          for i, m in enumerate(members)]))

    def class_scores(Q):
        S = Q @ G.T
        out = np.full((len(Q), len(classes)), -np.inf)
        for c in np.unique(codes):
            best = -np.sort(-S[:, codes == c], axis=1)
            out[:, c] = best[:, :agg_k].sum(1) if agg_k else best[:, 0]
        return out

    if qe[0]:
        firsts = [class_scores(Q).argmax(1) for Q in Qs]  # argmax: the first of equal scores, the earlier class
        Qs = [_l2(np.stack([_augment(q, G[codes == c], qe[0], qe[1]) for q, c in zip(Q, first)]))
              for Q, first in zip(Qs, firsts)]
    scores = []
    for view, Q in zip(views, Qs):
        sc = class_scores(Q)
        if alpha < 1:
            logits = np.zeros_like(sc)
            for q, (labels, W) in zip(view, centers):
                row = {lab: i for i, lab in enumerate(labels)}
                has = np.array([c in row for c in classes])
                sc[:, ~has] = -np.inf
                Wc = np.asarray(W, np.float64)[[row[c] for c in classes if c in row]]  # (C', K, D)
                logits[:, has] += np.einsum("qd,ckd->qck", q, Wc).max(2)
            sc = np.where(np.isfinite(sc), alpha * np.where(np.isfinite(sc), sc, 0) + (1 - alpha) * logits, -np.inf)
        scores.append(sc)
    best = np.max(scores, axis=0)
    order = np.lexsort((np.broadcast_to(np.arange(len(classes)), best.shape), -best), axis=1)[:, :5]
    return [[classes[c] for c in row if np.isfinite(b[c])] for row, b in zip(order, best)]


def kaggle_map5(top, truth):
    """Kaggle's MAP@5 written out: per query 1/rank of its true class among its first 5 predictions, else 0."""
    return sum(1 / (t[:5].index(x) + 1) if x in t[:5] else 0.0 for t, x in zip(top, truth)) / len(truth)


def brute_predictions(runs, names, classes, query="val", gallery="gallery", views=(), **tricks):
    """(query ids, brute_top5's predictions, true labels) of fold 0's validation images against the training images
    without them, from the runs' cached files."""
    dirs = [runs / n / "fold0" / "embeddings" for n in names]
    qv = [[read_embeddings(d, stem) for d in dirs] for stem in (query, *views)]
    gs = [read_embeddings(d, gallery) for d in dirs]
    q_ids, q_labels = qv[0][0][1], qv[0][0][2]
    assert all(x[1] == q_ids for v in qv for x in v) and all(x[1] == gs[0][1] for x in gs)
    keep = np.array([i not in set(q_ids) for i in gs[0][1]])
    centers = None
    if tricks.get("alpha", 1.0) < 1:
        centers = [([r["label"] for r in csv.DictReader(open(d / "centers.csv"))], np.load(d / "centers.npy"))
                   for d in dirs]
    top = brute_top5([[a for a, _, _ in v] for v in qv], [a[keep] for a, _, _ in gs],
                     [lab for lab, k in zip(gs[0][2], keep) if k], classes, centers=centers, **tricks)
    return q_ids, top, q_labels


def _ov(trained):
    return tiny_overrides(*trained, "epochs=1")


def _cfgs(trained, names):
    from pipeline.config import load_config

    return [load_config(str(trained[1] / f"{n}.yaml"), _ov(trained)) for n in names]


def _reference_val_map5(trained, names, flip, tricks):
    """Independently: the flip-TTA embeddings read from the run folders (files named as retrieval/embeddings.py
    documents), the validation gallery built here, reranking.rank_with_tricks, then Kaggle MAP@5."""
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.reranking import rank_with_tricks
    from pipeline.retrieval.embeddings import load_split
    from pipeline.retrieval.metrics import map_at_k
    from pipeline.retrieval.rank import encode

    cfgs = _cfgs(trained, names)
    sfx = ".flip" if flip else ""
    vals = [load_split(trained[1] / n / "fold0" / "embeddings", "val" + sfx) for n in names]
    gals = [load_split(trained[1] / n / "fold0" / "embeddings", "gallery" + sfx) for n in names]
    keep = np.array([i not in set(vals[0].ids) for i in gals[0].ids])
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    labels = [lab for lab, k in zip(gals[0].labels, keep) if k]
    codes, _ = rank_with_tricks([np.asarray(v.array) for v in vals], [np.asarray(g.array)[keep] for g in gals],
                       encode(labels, classes), k=5, **tricks)
    return map_at_k([[classes[c] for c in row if c >= 0] for row in codes], vals[0].labels, k=5)


def test_ensemble_tricks_reach_embeddings_and_ranking(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("ensemble", *names, "--flip", "--dba", "3,2", "--qe", "2", "--weights", "1,2", "--out", "tricks",
            "--overrides", *_ov(trained))
    assert p.returncode == 0, p.stderr
    assert "inference tricks: flip=True" in p.stdout
    report = json.loads((trained[1] / "ensembles" / "tricks" / "scores.json").read_text())
    assert report["tricks"]["dba"] == [3, 2.0] and report["tricks"]["weights"] == [1.0, 2.0]
    want = _reference_val_map5(trained, ["a", "b"], True, dict(weights=[1.0, 2.0], dba=(3, 2.0), qe=(2, 3.0)))
    assert report["ensemble"]["val_map5"] == pytest.approx(want, abs=1e-12)
    alone = _reference_val_map5(trained, ["a"], True, dict(dba=(3, 2.0), qe=(2, 3.0)))
    assert report["models"]["a"] == pytest.approx(alone, abs=1e-12)
    # no flags: exactly the plain engine's score on the default embeddings
    p = cli("ensemble", *names, "--out", "plain", "--overrides", *_ov(trained))
    assert p.returncode == 0, p.stderr
    plain = json.loads((trained[1] / "ensembles" / "plain" / "scores.json").read_text())
    assert plain["ensemble"]["val_map5"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], False, {}),
                                                           abs=1e-12)


def test_evaluate_ablate_writes_one_row_per_trick(trained):
    from pipeline.inference.tricks import ABLATIONS

    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("evaluate", *names, "--ablate", "--out", "abl", *_ov(trained))
    assert p.returncode == 0, p.stderr
    out = trained[1] / "evaluate" / "abl"
    rows = list(csv.DictReader(open(out / "ablate.csv")))
    assert [r["trick"].split(" ")[0] for r in rows] == ["baseline"] + [n.split(" ")[0] for n, _ in ABLATIONS]
    assert all((out / f).stat().st_size > 0 for f in ("ablate.md", "ablate.json", "ablate.png"))
    by = {r["trick"]: float(r["val_map5"]) for r in rows}
    assert by["baseline"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], False, {}), abs=1e-12)
    assert by["flip TTA"] == pytest.approx(_reference_val_map5(trained, ["a", "b"], True, {}), abs=1e-12)
    agg = _reference_val_map5(trained, ["a", "b"], False, dict(agg="sum", agg_k=3))
    assert by["class score = sum of top-3"] == pytest.approx(agg, abs=1e-12)
    for r in rows:
        assert float(r["delta"]) == pytest.approx(float(r["val_map5"]) - by["baseline"], abs=1e-12)
    # every row against the float64 brute force of its files and trick (all rows compared, the misses listed)
    from pipeline.data.layouts import load_dataset

    classes = load_dataset(trained[0] / "data").classes
    emb = trained[1] / "a" / "fold0" / "embeddings"
    val_ids = {r["image_id"] for r in csv.DictReader(open(emb / "val.csv"))}
    n_gallery = sum(r["image_id"] not in val_ids for r in csv.DictReader(open(emb / "gallery.csv")))
    dim = min(128, (32 + 32) // 2, n_gallery - 1)  # PCA: half the concatenated dims (embedding_dim=32 twice)
    specs = {label.format(dim=dim): dict(spec, pca=dim) if "pca" in spec else spec
             for label, spec in ABLATION_REFERENCES.items()}
    assert [r["trick"] for r in rows] == list(specs)
    misses = {}
    for r in rows:
        _, top, truth = brute_predictions(trained[1], ["a", "b"], classes, **specs[r["trick"]])
        want = kaggle_map5(top, truth)
        if float(r["val_map5"]) != pytest.approx(want, abs=1e-12):
            misses[r["trick"]] = (float(r["val_map5"]), want)
    assert misses == {}


def test_evaluate_with_embedding_trick_uses_its_embeddings(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a",)]
    p = cli("evaluate", *names, "--flip", "--metrics", "map@5", "--out", "flip", *_ov(trained))
    assert p.returncode == 0, p.stderr
    got = json.loads((trained[1] / "evaluate" / "flip" / "metrics.json").read_text())["rows"][0]["map@5"]
    assert got == pytest.approx(_reference_val_map5(trained, ["a"], True, {}), abs=1e-12)


@pytest.mark.parametrize("flags, needle", [
    (["--qe", "x"], "--qe 'x'"),
    (["--dba", "5,-1"], "--dba '5,-1'"),
    (["--weights", "1,2"], "--weights '1,2'"),
    (["--whiten"], "--whiten needs --pca"),
    (["--agg-k", "0"], "--agg-k 0"),
    (["--ablate", "--leave-one-out"], "--ablate"),
    (["--leave-one-out", "--dba", "5"], "--leave-one-out"),
])
def test_bad_trick_flags_are_one_line_errors(trained, flags, needle):
    p = cli("evaluate", str(trained[1] / "a.yaml"), *flags, *_ov(trained))
    assert_one_line_error(p, needle)


def test_ensemble_report_takes_the_tricks(trained):
    names = [str(trained[1] / f"{n}.yaml") for n in ("a", "b")]
    p = cli("ensemble-report", *names, "--dba", "3,2", "--flip", "--out", "rep_tricks", *_ov(trained))
    assert p.returncode == 0, p.stderr
    rows = json.loads((trained[1] / "ensembles" / "rep_tricks" / "report.json").read_text())["rows"]
    assert rows[-1]["val_map5"] == pytest.approx(
        _reference_val_map5(trained, ["a", "b"], True, dict(dba=(3, 2.0))), abs=1e-12)
    assert rows[0]["val_map5"] == pytest.approx(_reference_val_map5(trained, ["a"], True, dict(dba=(3, 2.0))),
                                                abs=1e-12)


def _trick_parser():
    import argparse

    from pipeline.inference.tricks import add_trick_arguments

    p = argparse.ArgumentParser()
    add_trick_arguments(p)
    return p


@pytest.mark.parametrize("name", sorted(__import__("pipeline.inference.tricks", fromlist=["TRICKS"]).TRICKS))
def test_trick_table_entry(name):
    """Every TRICKS entry: its flags parse to its defaults, its ablation rows change only its own keys, its values
    survive JSON, and it acts at a known stage."""
    from pipeline.inference.tricks import DEFAULTS, TRICKS, describe, tricks_from_args, tricks_from_json

    trick = TRICKS[name]
    assert trick.stage in ("embedding", "ranking")
    parsed = tricks_from_args(_trick_parser().parse_args([]), 2)
    assert parsed == DEFAULTS and {k: parsed[k] for k in trick.defaults} == trick.defaults
    for label, values in trick.ablations:
        assert set(values) <= set(trick.defaults) and values != {k: trick.defaults[k] for k in values}, label
        assert describe(dict(DEFAULTS, **values)) != "none"
    saved = json.loads(json.dumps(dict(DEFAULTS, **{k: v for _, vals in trick.ablations for k, v in vals.items()})))
    assert tricks_from_json(saved) == dict(DEFAULTS, **{k: v for _, vals in trick.ablations for k, v in vals.items()})


@pytest.mark.parametrize("argv, needle", [(["--qe", "x"], "--qe 'x'"), (["--dba", "-1"], "--dba '-1'"),
                                          (["--agg-k", "0"], "--agg-k 0"), (["--pca", "-2"], "--pca -2"),
                                          (["--whiten"], "--whiten needs --pca"),
                                          (["--weights", "1"], "--weights '1'")])
def test_trick_table_checks_flags(argv, needle):
    from pipeline.core.errors import UserError
    from pipeline.inference.tricks import tricks_from_args

    with pytest.raises(UserError, match=re.escape(needle)):
        tricks_from_args(_trick_parser().parse_args(argv), 2)
