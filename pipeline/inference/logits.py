"""Class scores from a classifier head's weights mixed with kNN (Hotel-ID 2022 3rd place, SPEC 5): for a query q,

    score(c) = alpha * knn(c) + (1 - alpha) * sum_m w_m max_j <q_m, W_{m,c,j}>

knn(c) being rank()'s class score (sum_m w_m <q_m, g_m>, per-class max, or agg="sum") and W_{m,c,j} model m's
L2-normalised weight row of class c, sub-center j (K = 1 for ArcFace / CosFace). alpha = 1 is plain kNN (rank()
itself). Only classes with gallery rows and a center in every model can be returned, whatever alpha: a class
without gallery rows has no kNN part to mix (and rank() never returns it), and one fixed candidate set keeps an
alpha sweep comparing scores rather than class sets. Both parts are cosine sums over the same models and weights,
so they share a scale and alpha needs no normalisation."""
import math

import numpy as np

from pipeline.core.errors import UserError
from pipeline.retrieval.knn import gemm, top_columns
from pipeline.retrieval.rank import rank
from pipeline.retrieval.search import Search, build_index

# bytes per (query, class) cell outside rank()'s own budget: rank's (Q, C) codes and scores (k = C) and its final
# sort (topk, lexsort, take_along_axis: ~40), here the dense kNN, the logit sum, one model's sub-center part, the mix
_CELL_BYTES = 64


def check_alpha(alpha) -> float:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not math.isfinite(alpha) or not 0 <= alpha <= 1:
        raise UserError(f"knn alpha must be a number in [0, 1] (1: plain kNN, 0: class weights only), got {alpha!r}")
    return float(alpha)


def logit_knn_rank(queries, gallery, gallery_codes, centers, center_codes, alpha, k: int = 5, weights=None,
                   max_memory: int = 2 << 30, search: Search | None = None, agg: str = "max", agg_k: int = 3,
                   log=print, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """rank()'s (codes (Q, k) int64, scores (Q, k) float32), ties -> smaller code, -1 / -inf padding, with the
    module docstring's mixed score. queries, gallery, gallery_codes, k, weights, max_memory, search, agg, agg_k,
    log, device: as rank(); centers: one (C_m, K_m, D_m) array per model (unit rows), center_codes: per model the
    class code of each center (rank's code space). Exact: queries go in chunks sized to max_memory (half of it to
    rank(), half to the (chunk, classes) arrays here); each chunk's kNN part is rank()'s score of every gallery
    class, the logit part fp32 dot products with the centers."""
    alpha = check_alpha(alpha)
    if alpha == 1:
        return rank(queries, gallery, gallery_codes, k=k, weights=weights, max_memory=max_memory, device=device,
                    log=log, agg=agg, agg_k=agg_k, search=search)
    qs = [queries] if isinstance(queries, np.ndarray) else list(queries)
    gs = [gallery] if isinstance(gallery, np.ndarray) else list(gallery)
    cs = [centers] if isinstance(centers, np.ndarray) else list(centers)
    ccs = [center_codes] if isinstance(center_codes, np.ndarray) else list(center_codes)
    w = np.ones(len(qs)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(cs) != len(qs) or len(ccs) != len(qs) or w.size != len(qs):
        raise UserError(f"logit_knn_rank: {len(qs)} model(s) but {len(cs)} center array(s), {len(ccs)} center code "
                        f"list(s), {w.size} weight(s)")
    if k < 1:
        raise UserError(f"logit_knn_rank: k must be >= 1, got {k}")
    Q = qs[0].shape[0]
    uniq = np.unique(np.asarray(gallery_codes))  # the kNN part's classes: rank() returns each of them, sorted
    out_c, out_s = np.full((Q, k), -1, np.int64), np.full((Q, k), -np.inf, np.float32)
    if Q == 0 or uniq.size == 0:
        return out_c, out_s
    if not np.issubdtype(uniq.dtype, np.integer) or uniq[0] < 0:
        raise UserError("rank: gallery_labels must be a 1-D array of non-negative integer class codes")
    parts, valid = _center_parts(qs, cs, ccs, uniq)
    G = uniq.size
    col_of = np.full(int(uniq[-1]) + 2, G, np.intp)  # code -> dense column; rank's -1 padding -> G (dropped)
    col_of[uniq] = np.arange(G)
    budget = max(int(max_memory), 2)
    chunk = int(np.clip(budget // 2 // (_CELL_BYTES * G), 1, Q))
    if search is not None and search.kind != "exact":
        index = build_index(gs, w, search, budget // 2)  # once, not per chunk
        log(f"logit_knn_rank: search={search.kind}: faiss index of {uniq.size} classes' rows built in "
            f"{index.train_s + index.add_s:.1f}s")
    else:
        index = None
    for q0 in range(0, Q, chunk):
        q1 = min(Q, q0 + chunk)
        codes, scores = rank([q[q0:q1] for q in qs], gs, gallery_codes, k=G, weights=w, max_memory=budget // 2,
                             device=device, log=log, agg=agg, agg_k=agg_k, search=search, index=index)
        # only an approximate search leaves classes unranked (code -1, score -inf): their column G is dropped
        S = np.full((q1 - q0, G + 1), -np.inf, np.float32)
        np.put_along_axis(S, col_of[codes], scores, 1)
        S = S[:, :G]
        S *= np.float32(alpha)
        L = np.zeros((q1 - q0, G), np.float32)
        for m, (rows, Ws) in enumerate(parts):
            q = np.ascontiguousarray(qs[m][q0:q1], np.float32)
            P = gemm(q, Ws[0])
            for Wj in Ws[1:]:  # the best sub-center
                np.maximum(P, gemm(q, Wj), out=P)
            P *= np.float32(w[m])
            if rows is None:
                L += P
            else:
                L[:, rows] += P
        L *= np.float32(1 - alpha)
        S += L
        S[:, ~valid] = -np.inf
        S[np.isnan(S)] = -np.inf  # alpha = 0 times an unranked class's -inf
        cols, vals = top_columns(S, k)
        out_c[q0:q1, :cols.shape[1]] = np.where(vals > -np.inf, uniq[cols], -1)
        out_s[q0:q1, :cols.shape[1]] = vals
    return out_c, out_s


def _center_parts(qs, cs, ccs, uniq):
    """Per model (the dense classes its centers cover, None for all of them in order; its sub-center slices
    (C_m', D) fp32 contiguous, one per j), restricted to the gallery's classes uniq; and valid: the classes that
    have a center in every model."""
    valid = np.ones(uniq.size, bool)
    parts = []
    for m, (q, c, cc) in enumerate(zip(qs, cs, ccs)):
        cc = np.asarray(cc).reshape(-1)
        if c.ndim != 3 or c.shape[0] != cc.size or c.shape[2] != q.shape[1]:
            raise UserError(f"logit_knn_rank: model {m}: centers {c.shape} for {cc.size} codes and {q.shape[1]}-d "
                            f"queries: expected ({cc.size}, K, {q.shape[1]})")
        if np.unique(cc).size != cc.size:
            raise UserError(f"logit_knn_rank: model {m}: a class code appears twice among its centers")
        pos = np.searchsorted(uniq, cc)
        keep = (pos < uniq.size) & (uniq[np.minimum(pos, uniq.size - 1)] == cc)  # centers of gallery classes
        has = np.zeros(uniq.size, bool)
        has[pos[keep]] = True
        valid &= has
        rows = None if keep.all() and cc.size == uniq.size and bool(np.all(pos == np.arange(uniq.size))) else pos[keep]
        parts.append((rows, [np.ascontiguousarray(c[keep, j], np.float32) for j in range(c.shape[1])]))
    return parts, valid
