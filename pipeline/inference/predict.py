"""From the models' cached embeddings to class predictions, with the inference tricks of the strongest peers
(their table: inference/tricks.py)."""

import numpy as np

from pipeline.core.errors import UserError
from pipeline.inference.tricks import DEFAULTS
from pipeline.retrieval.embeddings import EmbeddingSet
from pipeline.retrieval.rank import encode
from pipeline.retrieval.runsets import FoldSets, RunSetEmbeddings


def predict(queries: list, gallery: EmbeddingSet, classes: list, tricks: dict = DEFAULTS, max_memory: int = 2 << 30,
            log=print, models=None, search=None, views=(), centers=None) -> list:
    """Top-5 class names per query with the ranking-time tricks. queries: one array per model (of gallery's
    models); models: indices of the models to use (default all); search: rank()'s (None: exact); views: the same
    queries turned (rotation TTA: one list of arrays per turn), each class scored by its best view; centers: each
    model's ClassCenters (knn_alpha < 1: class scores mix in the cosine to the class weights)."""
    from pipeline.retrieval.orientation import merge_rotations

    models = list(range(len(queries)) if models is None else models)
    rank_view = _ranker(gallery, classes, tricks, max_memory, log, models, search, centers)
    ranked = [rank_view([np.asarray(v[m]) for m in models]) for v in [queries, *views]]
    codes = ranked[0][0] if len(ranked) == 1 else merge_rotations([c for c, _ in ranked], [s for _, s in ranked], 5)[0]
    return [[classes[c] for c in row if c >= 0] for row in codes]


def _ranker(gallery, classes, tricks, max_memory, log, models, search, centers):
    """The function from one view of the queries (the models' arrays) to its (codes, scores) with the ranking-time
    tricks; what every view shares (gallery codes, the kept class centers) is prepared once."""
    from pipeline.inference.logits import logit_knn_rank
    from pipeline.inference.reranking import rank_with_tricks

    w = None if tricks["weights"] is None else [tricks["weights"][m] for m in models]
    gs, codes = [gallery.arrays[m] for m in models], encode(gallery.labels, classes)
    kw = dict(k=5, weights=w, agg=tricks["agg"], agg_k=tricks["agg_k"], max_memory=max_memory, log=log, search=search)
    if tricks["knn_alpha"] >= 1:
        return lambda qs: rank_with_tricks(qs, gs, codes, pca_dim=tricks["pca"], whiten=tricks["whiten"],
                                        dba=tricks["dba"], qe=tricks["qe"], **kw)
    if tricks["pca"] or tricks["dba"][0] or tricks["qe"][0]:
        raise UserError("--knn-alpha below 1 ranks the models' own embeddings: use it without --pca, --dba and --qe")
    if centers is None or any(centers[m] is None for m in models):
        raise UserError("--knn-alpha below 1 needs classifier heads (arcface, cosface, subcenter_arcface): a pair "
                        "head (supcon, triplet) has no class weights; leave --knn-alpha at 1 for it")
    index = {c: i for i, c in enumerate(classes)}
    keep = [np.array([lab in index for lab in centers[m].labels]) for m in models]
    arrays = [np.asarray(centers[m].array)[k] for m, k in zip(models, keep)]
    center_codes = [encode([lab for lab, on in zip(centers[m].labels, k) if on], classes) for m, k in zip(models, keep)]
    return lambda qs: logit_knn_rank(qs, gs, codes, arrays, center_codes, tricks["knn_alpha"], **kw)


def map5(queries: EmbeddingSet, gallery: EmbeddingSet, classes: list, tricks: dict = DEFAULTS,
         max_memory: int = 2 << 30, log=print, models=None, search=None, centers=None) -> float:
    """MAP@5 of labelled queries (with their turned views, if any) against a gallery (summed cosines of the models,
    per-class max by default)."""
    from pipeline.retrieval.metrics import map_at_k

    preds = predict([np.asarray(a) for a in queries.arrays], gallery, classes, tricks, max_memory, log, models, search,
                    [v.arrays for v in queries.views], centers)
    return map_at_k(preds, list(queries.labels), k=5)


def val_map5(inputs: RunSetEmbeddings, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> float:
    """Validation MAP@5 (queries: the validation images; gallery: val_gallery) of the models (indices; all)."""
    return map5(inputs.val, inputs.val_gallery, classes, tricks, max_memory, log, models, centers=inputs.centers)


def oof_predictions(sets: FoldSets, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> tuple:
    """Each fold's validation images ranked by that fold's runs (models: config indices; all) against its
    val_gallery: ({fold: (its predictions, its labels)}, every validated image id in the same order)."""
    out, ids = {}, []
    for fold, inputs in sets.folds.items():
        p = predict([np.asarray(a) for a in inputs.val.arrays], inputs.val_gallery, classes, tricks, max_memory, log,
                    models, views=[v.arrays for v in inputs.val.views], centers=inputs.centers)
        out[fold] = (p, list(inputs.val.labels))
        ids += list(inputs.val.ids)
    return out, ids


def oof_map5(sets: FoldSets, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> tuple:
    """Out-of-fold MAP@5 (oof_predictions), pooled over every validated image (MAP is a mean over queries: folds
    count by their sizes). Returns ({fold: (MAP@5, queries)}, the pooled MAP@5, the pooled class-balanced MAP@5)."""
    from pipeline.retrieval.metrics import map_at_k

    per_fold, _ = oof_predictions(sets, classes, tricks, max_memory, log, models)
    preds = [p for ps, _ in per_fold.values() for p in ps]
    truth = [t for _, ts in per_fold.values() for t in ts]
    return ({f: (map_at_k(ps, ts, k=5), len(ps)) for f, (ps, ts) in per_fold.items()}, map_at_k(preds, truth, k=5),
            map_at_k(preds, truth, k=5, balanced=True))
