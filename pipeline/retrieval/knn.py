"""The k nearest gallery rows (nearest), and the pieces every queries x gallery product here is built from.

nearest() is the one search for "the k most similar gallery rows": DBA and QE (inference/reranking.py), evaluate's
instance metrics, show's best rows and the leave-one-out MAP@5 (retrieval/metrics.py). rank() (retrieval/rank.py),
the per-class ranking engine, is built from the same pieces: the fp32 product and its backend (gemm, gemm_backend),
the fp16 -> fp32 block cast (cast_into), the exact top-k of columns (top_columns) and the memory plan (Plan: query
chunks x gallery blocks x score tiles under a byte budget).

nearest is exact: fp32 products of fp16/fp32 inputs, ties -> smaller row index, and memory-bounded: the gallery (an
fp16 np.memmap normally) is cast to fp32 one block at a time, and neither a queries x gallery matrix nor an fp32 copy
of the whole gallery is held unless it fits max_memory.

backend="faiss" runs faiss.IndexFlatIP instead. It returns the same neighbours where scores do not tie
(tests/test_knn.py), but it does not serve as the default:
  - the index holds an fp32 copy of the whole gallery (twice an fp16 gallery), outside any memory budget;
  - it has no per-query exclusion (leave-one-out, DBA's "not the row itself");
  - among tied scores its order is not by row index;
  - it measured slower here than this search on the oneDNN GEMM (bench/knn.py; docs/benchmarks.md)."""
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.core.io import drop_pages

# Gallery blocks up to 128 MB (fp32) and 1024 rows, score tiles up to 16 MB. The buffers are reused across blocks:
# page-faulting fresh memory every block cost more than the fp16 cast itself, and a tile under glibc's 32 MB mmap
# threshold comes back from the heap without page faults. Larger blocks measured slower (bench/rank.py).
_BLOCK_BYTES = 128 << 20
_BLOCK_ROWS = 1024
_TILE_BYTES = 16 << 20
_FAISS_ADD_ROWS = 4096  # the fp32 copy of the gallery is made this many rows at a time

_GEMM = None  # "onednn" or "numpy", picked on first use by gemm_backend(); tests and bench/rank.py set it


def gemm_backend() -> str:
    """The CPU matmul: oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise, the op torch.compile emits for
    linear) on CPUs with AVX-512, where it measured faster than numpy's OpenBLAS (docs/benchmarks.md) and is exact
    fp32 (no bf16 fpmath); numpy elsewhere, or when this torch build lacks the op."""
    global _GEMM
    if _GEMM is None:
        try:
            import torch

            ok = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                  and torch.backends.cpu.get_cpu_capability().startswith("AVX512"))
        except Exception:  # no torch, or an op namespace that raises: numpy always works
            ok = False
        _GEMM = "onednn" if ok else "numpy"
    return _GEMM


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, backend: str | None = None) -> np.ndarray:
    """a @ b.T in fp32 (a, b: C-contiguous fp32 2-D arrays), into `out` when given. backend: "onednn" or "numpy"
    (default: gemm_backend()); oneDNN returns a fresh array, copied into `out` only when one is given."""
    if (backend or gemm_backend()) == "numpy":
        return np.matmul(a, b.T, out=out)
    import torch

    a, b = as_tensors(a, b)
    r = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "").numpy()
    if out is None:
        return r
    out[...] = r
    return out


def as_tensors(*arrays: np.ndarray) -> list:
    """torch views of numpy arrays. Read-only memmaps make torch warn about writability; we only read them."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [torch.from_numpy(np.asarray(a)) for a in arrays]


def cast_into(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Copy (and upcast) src into the fp32 array dst; returns dst. torch's fp16 -> fp32 conversion is much faster
    than numpy's here."""
    import torch

    # One thread: BLAS's threads are still spinning from the last matmul, and a multi-threaded copy fighting them
    # measured slower end to end than this single-threaded one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dst_t, src_t = as_tensors(dst, src)
        dst_t.copy_(src_t)
    finally:
        torch.set_num_threads(threads)
    return dst


def top_columns(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns (rows, k') int64, values (rows, k') fp32): the k' = min(k, C) largest values of each row of S
    (rows x C, fp32), by value descending, ties -> smaller column.

    torch.topk of k+1 (threaded, small outputs) rather than np.argpartition, whose (rows x C) int64 result costs
    fresh pages on every call. The kept k are ordered by a lexsort; a row whose k-th and (k+1)-th values tie is
    redone with a stable argsort (rare)."""
    import torch

    n, C = S.shape
    kk = min(k, C)
    if kk <= 0 or n == 0:
        return np.zeros((n, max(kk, 0)), np.int64), np.zeros((n, max(kk, 0)), np.float32)
    vals, part = torch.topk(torch.from_numpy(S), min(kk + 1, C), dim=1)
    vals, part = vals.numpy(), part.numpy()
    tied = np.flatnonzero(vals[:, kk - 1] == vals[:, kk]) if kk < C else ()
    vals, part = vals[:, :kk], part[:, :kk]
    order = np.lexsort((part, -vals), axis=1)
    part = np.take_along_axis(part, order, 1)
    vals = np.take_along_axis(vals, order, 1)
    for r in tied:
        part[r] = np.argsort(-S[r], kind="stable")[:kk]
        vals[r] = S[r, part[r]]
    return part, vals


def _clip(x, hi):
    return int(np.clip(x, 1, hi))


@dataclass(frozen=True)
class Plan:
    """How a search cuts its work to fit a byte budget: `chunk` query rows (with their running state) stay resident
    while the whole gallery streams past in blocks of `block` rows, each met by `tile` query rows at a time (a
    tile x block score matrix). Each constructor sizes one search from what it holds per query row, gallery row and
    tile row; half the budget goes to the query side, so the gallery is cast once per chunk, usually once in all."""
    chunk: int
    block: int
    tile: int

    def halved(self) -> "Plan":
        return Plan(max(1, self.chunk // 2), max(1, self.block // 2), max(1, self.tile // 2))

    @classmethod
    def rank_cpu(cls, budget: int, n_queries: int, n_rows: int, n_classes: int, dims: list, agg_k: int,
                 cast_queries: bool, gather: bool) -> "Plan":
        """rank's CPU path. Per query row: the running max and top-k temporaries (~20 B per class) and, when
        cast_queries, its weighted, concatenated fp32 copy; per gallery row its fp32 block row (+ the fp16 gather
        temp when the gallery is read class-sorted: gather); per tile row the scores.
        agg_k > 0 (agg="sum"): per class also the running top-K (4K B), the isneginf mask and float64 sum of the
        finish; per gallery row the block's layout indices; per tile row the scores (+ a -inf column), the padded
        cells (at most runs * K + 2 B, runs <= min(B, C)) and the merge of a class carried over from the last block."""
        K, C, Dt = agg_k, n_classes, sum(dims)
        q_row = C * (20 + (5 * K + 8 if K else 0)) + (Dt * 4 if cast_queries else 0)
        Qo = _clip(budget // 2 // q_row, n_queries)
        rest = max(budget - Qo * q_row, 1)
        row_bytes = Dt * 4 + (max(dims) * 2 if gather else 0) + ((K + 2) * 8 + 48 if K else 0)
        B = _clip(min(min(rest // 2, _BLOCK_BYTES) // row_bytes, _BLOCK_ROWS), n_rows)
        tile_row = (3 * B + 1 + min(B, C) * K + 3 * K) * 4 if K else B * 4
        return cls(Qo, B, _clip(min(rest - B * row_bytes, _TILE_BYTES) // tile_row, Qo))

    @classmethod
    def rank_cuda(cls, budget: int, n_queries: int, n_rows: int, n_classes: int, dim: int, agg_k: int) -> "Plan":
        """rank's CUDA path (a quarter of the budget to the query side). Per query row: the running max (fp32) and
        its fp16 queries; per gallery row the fp16 block; per tile cell the fp32 product, a model's partial product
        and the int64 scatter index (an expanded view, so no memory). agg_k > 0: per query row the running top-K
        and, on the host, the finish's temporaries; per gallery row the layout (index, mask); per tile row also the
        padded cells (<= runs * K + 2 B), the gathered running top-K and topk's values + int64 indices."""
        K, C = agg_k, n_classes
        q_row = (C * (5 * K + 28) if K else C * 4) + dim * 2
        Qo = _clip(budget // 4 // q_row, n_queries)
        rest = max(budget - Qo * q_row, 1)
        B = _clip(rest // 2 // (dim * 2 + ((K + 2) * 17 + 48 if K else 0)), n_rows)
        return cls(Qo, B, _clip(rest // 2 // ((16 * B + 20 * min(B, C) * K) if K else B * 8), Qo))

    @classmethod
    def nearest(cls, budget: int, n_queries: int, n_rows: int, dim: int, k: int, cast_queries: bool) -> "Plan":
        """nearest(). Per query row: its fp32 copy when cast_queries, the running top-k (value + row) and the
        merge's candidates, topk outputs and lexsort (~64 B per neighbour); per gallery row its fp32 block row; per
        tile row the scores and topk's outputs."""
        q_row = (dim * 4 if cast_queries else 0) + 64 * k
        Qo = _clip(budget // 2 // q_row, n_queries)
        rest = max(budget - Qo * q_row, 1)
        B = _clip(min(min(rest // 2, _BLOCK_BYTES) // (dim * 4), _BLOCK_ROWS), n_rows)
        return cls(Qo, B, _clip(min(rest - B * dim * 4, _TILE_BYTES) // (B * 4 + 24 * (k + 1)), Qo))


class Neighbours(NamedTuple):
    """nearest()'s answer: per query its gallery rows (int64) and their scores (fp32), best first."""
    indices: np.ndarray
    scores: np.ndarray


def nearest(queries: np.ndarray, gallery: np.ndarray, k: int, max_memory: int = 2 << 30,
            exclude: np.ndarray | None = None, backend: str = "auto") -> Neighbours:
    """The k gallery rows of largest dot product (cosine, for L2-normalised rows) with each query, best first, ties
    -> smaller row index: Neighbours(indices (Q, k'), scores (Q, k')), k' = min(k, rows available: N, or N - 1 when
    some query excludes a row). queries (Q, D), gallery (N, D): fp16 or fp32 (fp32 products), the gallery may be an
    np.memmap. exclude: (Q,) int, a gallery row each query may not return (-1: none). max_memory bounds the extra
    bytes (Plan.nearest). backend: "auto" (the GEMM gemm_backend() picks), "onednn" or "numpy" (that GEMM), or
    "faiss" (IndexFlatIP; no exclude, and an fp32 gallery copy outside max_memory: see the module docstring)."""
    q, g = np.asarray(queries), np.asarray(gallery)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"nearest: queries {q.shape} and gallery {g.shape} must be 2-D with equal dims")
    if backend not in ("auto", "onednn", "numpy", "faiss"):
        raise ValueError(f"nearest: backend must be 'auto', 'onednn', 'numpy' or 'faiss', got {backend!r}")
    Q, N = q.shape[0], g.shape[0]
    skip = None if exclude is None else np.asarray(exclude, np.int64).reshape(-1)
    if skip is not None and (skip.size != Q or (skip >= N).any()):
        raise ValueError(f"nearest: exclude needs one gallery row (< {N}) or -1 per query; got {skip.size} "
                         f"entries for {Q} queries")
    if skip is not None and not (skip >= 0).any():
        skip = None
    kk = max(0, min(int(k), N - int(skip is not None)))
    if kk == 0 or Q == 0:
        return Neighbours(np.zeros((Q, kk), np.int64), np.zeros((Q, kk), np.float32))
    if backend == "faiss":
        if skip is not None:
            raise ValueError("nearest: backend='faiss' has no per-query exclusion; use backend='auto'")
        return _faiss(q, g, kk)
    return _search(q, g, kk, skip, max(int(max_memory), 1), None if backend == "auto" else backend)


def _search(q, g, k, skip, budget, backend):
    (Q, D), N = q.shape, g.shape[0]
    cast_q = not (q.dtype == np.float32 and q.flags.c_contiguous)
    cast_g = not (g.dtype == np.float32 and g.flags.c_contiguous)
    plan = Plan.nearest(budget, Q, N, D, k, cast_q)
    qbuf = np.empty((plan.chunk, D), np.float32) if cast_q else None
    gbuf = np.empty(plan.block * D, np.float32) if cast_g else None
    sbuf = np.empty(plan.tile * plan.block, np.float32) if (backend or gemm_backend()) == "numpy" else None
    out = Neighbours(np.empty((Q, k), np.int64), np.empty((Q, k), np.float32))
    for q0 in range(0, Q, plan.chunk):
        q1 = min(Q, q0 + plan.chunk)
        X = cast_into(qbuf[:q1 - q0], q[q0:q1]) if cast_q else q[q0:q1]
        # the running top-k; its placeholders (-inf, row N) lose to every real row, ties included
        best_s, best_i = out.scores[q0:q1], out.indices[q0:q1]
        best_s.fill(-np.inf)
        best_i.fill(N)
        for a in range(0, N, plan.block):
            b = min(N, a + plan.block)
            G = cast_into(gbuf[:(b - a) * D].reshape(b - a, D), g[a:b]) if cast_g else g[a:b]
            if cast_g:
                drop_pages(g)  # the block is in gbuf: a memmap gallery's pages need not stay in this process
            for s0 in range(0, q1 - q0, plan.tile):
                s1 = min(q1 - q0, s0 + plan.tile)
                S = gemm(X[s0:s1], G, None if sbuf is None else sbuf[:(s1 - s0) * (b - a)].reshape(s1 - s0, -1),
                         backend)
                if skip is not None:
                    own = skip[q0 + s0:q0 + s1] - a
                    r = np.flatnonzero((own >= 0) & (own < b - a))
                    S[r, own[r]] = -np.inf
                cols, vals = top_columns(S, k)
                _merge(best_s[s0:s1], best_i[s0:s1], vals, cols + a)
    return out


def _merge(best_s, best_i, vals, rows):
    """Fold a block's top-k (vals at gallery rows `rows`) into the running top-k, in place, by (score desc, row
    asc). A full sort of the 2k candidates: cheaper than top_columns at these widths."""
    s = np.concatenate((best_s, vals), axis=1)
    i = np.concatenate((best_i, rows), axis=1)
    order = np.lexsort((i, -s), axis=1)[:, :best_s.shape[1]]
    best_s[...] = np.take_along_axis(s, order, 1)
    best_i[...] = np.take_along_axis(i, order, 1)


def _faiss(q, g, k):
    import faiss

    index = faiss.IndexFlatIP(g.shape[1])
    for a in range(0, g.shape[0], _FAISS_ADD_ROWS):
        index.add(np.ascontiguousarray(g[a:a + _FAISS_ADD_ROWS], np.float32))
    scores, rows = index.search(np.ascontiguousarray(q, np.float32), k)
    return Neighbours(rows.astype(np.int64), scores.astype(np.float32))
