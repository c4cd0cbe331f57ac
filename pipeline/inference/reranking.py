"""Embedding-space inference tricks of the strongest Kaggle instance-identification solutions, over numpy arrays.

  combine  per-model embeddings -> one space; model m's block scaled by sqrt(w_m), so <q, g> = sum_m w_m cos_m
  pca      PCA fitted on the gallery (optionally whitened), both sides projected and L2-normalised
           (Hotel-ID 2022 1st place: PCA of the concatenated ensemble embedding); an exact float64 fit, whose
           dims x dims scatter matrix is the one part of it max_memory cannot bound
  dba      label-constrained database-side augmentation (Hotel-ID 2021 1st place: k=5, alpha=3)
  qe       label-constrained query expansion towards the first ranking's top-1 class
  rank_with_tricks  the composer: combine -> PCA -> DBA -> QE -> rank(); with every trick off it *is* rank()

Neighbour searches are chunked under max_memory (similarity cells + gathered neighbours), never a full N x N or
Q x N matrix; they run in float32 like rank() (PCA's moments in float64). The combined float32 copies of the
embeddings (rows x sum of dims) come on top of max_memory: they are the price of a single embedding space."""

import numpy as np

from pipeline.core.errors import UserError
from pipeline.retrieval.knn import nearest
from pipeline.retrieval.rank import rank
from pipeline.retrieval.search import concat_scaled

_EPS = 1e-12  # whitening: sqrt(eigenvalue + eps), so an eigenvalue at the rank edge cannot divide by ~0
_RANK_TOL = 1e-12  # eigenvalues below dims * this * the largest are numerical zeros (eigh's error is ~eps * max)


def combine(queries, gallery, weights=None):
    """(queries, gallery) as single float32 arrays: per-model lists concatenated along the feature axis, model m's
    block multiplied by sqrt(w_m) (equal weights by default), so a dot product = sum_m w_m cos_m."""
    qs, gs = _as_list(queries), _as_list(gallery)
    if not qs or len(qs) != len(gs):
        raise UserError(f"tricks: {len(qs)} query array(s) but {len(gs)} gallery array(s); give one of each per model")
    for m, (q, g) in enumerate(zip(qs, gs)):
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1] or q.shape[0] != qs[0].shape[0] \
                or g.shape[0] != gs[0].shape[0]:
            raise UserError(f"tricks: model {m}: queries {q.shape} / gallery {g.shape} must be 2-D with equal dims "
                            "and the same row counts as model 0")
    w = _weights(weights, len(qs))
    return concat_scaled(qs, w), concat_scaled(gs, w)


def pca(gallery: np.ndarray, queries: np.ndarray, dim: int, whiten: bool = False,
        max_memory: int = 2 << 30) -> tuple[np.ndarray, np.ndarray]:
    """(gallery, queries) projected on the top `dim` principal axes of the gallery, L2-normalised, float32.
    Fit: mean and scatter matrix X^T X of the mean-centred gallery in float64, chunk by chunk into one D x D matrix
    (BLAS syrk, in place), then its top `dim` eigenpairs (LAPACK syevr, in place). whiten divides axis i by
    sqrt(lambda_i + 1e-12), lambda_i = eigenvalue / (rows - 1) (the sample variance along it). dim must be <= the
    centred gallery's numerical rank (<= min(rows - 1, dims)).
    Memory: the chunks get what max_memory leaves beside the D x D scatter (8 D^2 bytes) and the D x dim axes, so the
    peak is about max(max_memory, 8 (D^2 + D dim)) plus the two float32 results. That D^2 floor is the price of an
    exact fit, and why this is not scikit-learn's IncrementalPCA: it has no floor (it keeps dim x D components; its
    batches need >= dim rows) but truncates to dim axes after every batch, so it is exact only in one batch. On
    20000 x 2048 float16, dim 512, it is the same in one batch but 4x slower (12 s vs 2.7 s) at twice the memory;
    in 256 MiB (10 batches) projected rows are off by up to 0.18, and on the tests' data the rankings change."""
    g, q = np.asarray(gallery), np.asarray(queries)
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise UserError(f"pca: gallery {g.shape} and queries {q.shape} must be 2-D with equal dims")
    N, D = g.shape
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise UserError(f"pca: dim must be a positive integer, got {dim!r}")
    mean, scatter = _moments(g, max(1, (int(max_memory) - 8 * D * D) // (8 * D)))
    ev, V = _top_axes(scatter, min(dim, D))  # dim > D cannot pass the rank check: D eigenpairs tell the rank
    del scatter  # the projection's chunks may use its memory
    # all eigenvalues above the cut are among the top min(dim, D): when dim > rank, this counts the whole rank
    rank_ = int((ev > ev[0] * D * _RANK_TOL).sum()) if N and ev[0] > 0 else 0
    if dim > rank_:
        raise UserError(f"pca: dim {dim} is more than the {rank_} dimension(s) the centred gallery spans "
                        f"({N} rows x {D} dims); use a pca dim <= {rank_}")
    P = V.copy()  # contiguous for the products (V is the eigensolver's, reversed)
    del V
    if whiten:
        P /= np.sqrt(ev / max(N - 1, 1) + _EPS)
    step = max(1, (int(max_memory) - 8 * D * dim) // (8 * (D + dim)))  # a float64 chunk and its projection
    return _project(g, mean, P, step), _project(q, mean, P, step)


def dba(gallery: np.ndarray, gallery_codes: np.ndarray, k: int, alpha: float, max_memory: int = 2 << 30) -> np.ndarray:
    """Label-constrained database-side augmentation, float32 (rows, dims). Row i becomes
        normalise(g_i + sum_{j in NN_i} max(<g_i, g_j>, 0)^alpha * g_j)
    where NN_i = the min(k - 1, n_c - 1) gallery rows j != i with codes[j] == codes[i] of largest <g_i, g_j>
    (ties -> smaller row index), n_c = rows of that class. k counts the row itself (k <= 1: only normalises);
    every row is augmented from the original rows (not sequentially); alpha = 0 is a plain sum."""
    _check_ka("dba", k, alpha)
    g = np.asarray(gallery, np.float32)
    codes = _codes(gallery_codes, g.shape[0], "dba")
    out = g.copy()
    if k > 1:
        order = np.argsort(codes, kind="stable")  # rows class by class: the search never leaves a class
        cuts = np.flatnonzero(np.diff(codes[order])) + 1
        for rows in np.split(order, cuts):
            if rows.size > 1:
                G = g[rows]
                out[rows] = _expand(G, G, k - 1, alpha, max_memory, exclude_self=True)
    return _l2(out)


def qe(queries: np.ndarray, gallery: np.ndarray, gallery_codes: np.ndarray, k: int, alpha: float,
       top_classes: np.ndarray, max_memory: int = 2 << 30) -> np.ndarray:
    """Label-constrained query expansion, float32 (Q, dims). Query i becomes
        normalise(q_i + sum_{j in NN_i} max(<q_i, g_j>, 0)^alpha * g_j)
    where NN_i = the min(k, n_c) gallery rows of class c = top_classes[i, 0] (its top-1 prediction from a first
    ranking; top_classes may also be 1-D) of largest <q_i, g_j> (ties -> smaller row index). A query whose c is -1
    or has no gallery row is only normalised; so is every query when k = 0. alpha = 0 is a plain sum."""
    _check_ka("qe", k, alpha)
    q, g = np.asarray(queries, np.float32), np.asarray(gallery, np.float32)
    codes = _codes(gallery_codes, g.shape[0], "qe")
    top1 = np.asarray(top_classes).reshape(q.shape[0], -1)[:, 0] if q.shape[0] else np.zeros(0, np.int64)
    out = q.copy()
    if k > 0 and codes.size and q.shape[0]:
        g_order = np.argsort(codes, kind="stable")
        g_sorted = codes[g_order]
        q_order = np.argsort(top1, kind="stable")  # queries grouped by predicted class: one gallery slice each
        cuts = np.flatnonzero(np.diff(top1[q_order])) + 1
        for qi in np.split(q_order, cuts):
            a, b = np.searchsorted(g_sorted, top1[qi[0]], "left"), np.searchsorted(g_sorted, top1[qi[0]], "right")
            if b > a:
                out[qi] = _expand(q[qi], g[g_order[a:b]], k, alpha, max_memory)
    return _l2(out)


_DBA, _QE = dba, qe  # rank_with_tricks' dba=/qe= arguments shadow the functions


def rank_with_tricks(queries, gallery, gallery_codes, k=5, weights=None, pca_dim=0, whiten=False, dba=(0, 3.0),
            qe=(0, 3.0), agg="max", agg_k=3, max_memory=2 << 30, device="auto", log=print, search=None):
    """Top-k classes (top_classes (Q,k) int64, top_scores (Q,k) float32, as rank()) with embedding tricks.
    queries/gallery: one array per model; weights: per-model weights (equal by default); dba/qe: (k, alpha),
    k = 0 off; agg/agg_k: rank()'s class aggregation; search: rank()'s (None: exact).
    All tricks off (pca_dim=0, dba k=0, qe k=0): exactly rank(queries, gallery, ...), no extra memory. Otherwise:
    combine with the weights normalised to sum 1 (rows stay unit length, <q, g> = weighted mean of cosines, which
    is the similarity DBA/QE weigh), then PCA (whiten) on it, then DBA of the gallery, then QE of the queries
    towards the top-1 class of a first rank() on that (same agg), then the final rank()."""
    extra = {"agg": agg, "agg_k": agg_k}
    dba_k, dba_alpha = _pair("dba", dba)
    qe_k, qe_alpha = _pair("qe", qe)
    if not isinstance(pca_dim, (int, np.integer)) or pca_dim < 0:
        raise UserError(f"pca_dim must be an integer >= 0 (0 = off), got {pca_dim!r}")
    kw = dict(max_memory=max_memory, device=device, log=log, search=search, **extra)
    if not (pca_dim or dba_k or qe_k):  # today's engine, untouched
        return rank(queries, gallery, gallery_codes, k=k, weights=weights, **kw)
    w = _weights(weights, len(_as_list(queries)))
    if w.sum() <= 0:
        raise UserError("weights must not all be 0")
    q, g = combine(queries, gallery, w / w.sum())
    codes = _codes(gallery_codes, g.shape[0], "rank_with_tricks")
    if pca_dim:
        g, q = pca(g, q, pca_dim, whiten, max_memory)
    if dba_k:
        g = _DBA(g, codes, dba_k, dba_alpha, max_memory)
    if qe_k:
        first, _ = rank(q, g, codes, k=1, **kw)
        q = _QE(q, g, codes, qe_k, qe_alpha, first, max_memory)
    return rank(q, g, codes, k=k, **kw)


def _expand(X, G, n, alpha, max_memory, exclude_self=False):
    """X + sum of max(sim, 0)^alpha * G[j] over each row's min(n, |G| - self) most similar G rows (nearest(): ties
    -> smaller index), the neighbours gathered in row chunks that fit max_memory. exclude_self: X is G and a row may
    not pick itself."""
    nb = nearest(X, G, n, max_memory, exclude=np.arange(X.shape[0]) if exclude_self else None)
    out = X.copy()
    nn = nb.indices.shape[1]
    if nn == 0:
        return out
    wts = np.maximum(nb.scores, 0) ** np.float32(alpha)
    step = max(1, int(max_memory) // (nn * G.shape[1] * 4))
    for s in range(0, X.shape[0], step):
        out[s:s + step] += np.einsum("ij,ijd->id", wts[s:s + step], G[nb.indices[s:s + step]])
    return out


def _moments(g, step):
    """float64 mean and centred scatter matrix of g's rows, step rows at a time. Only the lower triangle of the scatter
    is filled, Fortran-ordered: what syrk writes in place and syevr reads without a copy."""
    from scipy.linalg import blas

    N, D = g.shape
    mean = sum(g[a:a + step].sum(0, dtype=np.float64) for a in range(0, N, step)) / max(N, 1)
    scatter = np.zeros((D, D), order="F")
    buf = np.empty((min(step, N), D))  # one float64 chunk, reused: a fresh one would coexist with the last
    for a in range(0, N, step):
        x = buf[:min(step, N - a)]
        x[:] = g[a:a + step]
        x -= mean
        scatter = blas.dsyrk(1.0, x.T, beta=1.0, c=scatter, lower=1, overwrite_c=1)  # x.T is Fortran-ordered: no copy
    return mean, scatter


def _top_axes(scatter, k):
    """The k largest eigenvalues, descending, and their eigenvectors (columns): syevr computes only those, in the
    scatter's own memory (overwritten), where np.linalg.eigh holds about three more D x D (a copy, syevd's work)."""
    from scipy.linalg import eigh

    D = scatter.shape[0]
    ev, V = eigh(scatter, lower=True, overwrite_a=True, subset_by_index=(D - k, D - 1))
    return ev[::-1], V[:, ::-1]


def _project(x, mean, P, step):
    N = x.shape[0]
    out = np.empty((N, P.shape[1]), np.float32)
    buf = np.empty((min(step, N), x.shape[1]))  # as in _moments: one centred float64 chunk
    for a in range(0, N, step):
        c = buf[:min(step, N - a)]
        c[:] = x[a:a + step]
        c -= mean
        out[a:a + step] = c @ P
    return _l2(out)


def _l2(x):
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=x, where=n > 0)  # in place: x is always our own copy; zero rows stay zero


def _as_list(x):
    return [np.asarray(x)] if isinstance(x, np.ndarray) else [np.asarray(a) for a in x]


def _weights(weights, n):
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.size != n or not np.all(np.isfinite(w)) or (w < 0).any():
        raise UserError(f"weights {w.tolist()}: give {n} finite weight(s) >= 0, one per model")
    return w


def _codes(codes, n, who):
    c = np.asarray(codes).reshape(-1)
    if c.size != n or (c.size and not np.issubdtype(c.dtype, np.integer)):
        raise UserError(f"{who}: gallery codes must be {n} integer class codes (one per gallery row), got {c.size}")
    return c.astype(np.int64)


def _check_ka(who, k, alpha):
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise UserError(f"{who}: k must be an integer >= 0 (0 = off), got {k!r}")
    if not isinstance(alpha, (int, float, np.number)) or not np.isfinite(alpha) or alpha < 0:
        raise UserError(f"{who}: alpha must be a finite number >= 0 (Hotel-ID 2021 used 3), got {alpha!r}")


def _pair(who, kv):
    try:
        k, alpha = kv
    except (TypeError, ValueError):
        raise UserError(f"{who} must be a (k, alpha) pair, e.g. {who}=(5, 3.0); got {kv!r}") from None
    _check_ka(who, k, alpha)
    return k, alpha
