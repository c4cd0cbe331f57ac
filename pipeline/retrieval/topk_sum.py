"""The sum-of-top-k class score of rank() (agg="sum"): each class scores the sum of its agg_k = K largest row
scores. The padded per-class layout of a gallery block, the CPU fold of one class-sorted block into the running
top-K, and the final sums (retrieval/rank.py runs them)."""

import numpy as np

from pipeline.retrieval.knn import gemm


def sum_layout(bcls: np.ndarray, K: int, front: int) -> tuple[np.ndarray, list]:
    """Padded layout for agg="sum" of one gallery block whose column j holds class bcls[j] (any order).

    Cells of a (rows, cells) array: classes are bucketed by their run length r in this block (r in [2^i, 2^(i+1)));
    bucket i is an (n_i, W_i) slab, W_i = max(front + its longest run, K): per class `front` slots (0, or K for
    the running top values), then its scores, then -inf padding, so cells <= runs * K + 2 * columns. Returns
    (gidx, buckets): gidx[cell] = the block column feeding that cell, or len(bcls) for a padding / front cell;
    buckets = [(offset, n_i, W_i, class indices)], every class of the block in exactly one bucket."""
    n = bcls.size
    order = np.argsort(bcls, kind="stable")
    cs = bcls[order]
    first = np.flatnonzero(np.concatenate(([True], cs[1:] != cs[:-1])))
    counts = np.diff(np.append(first, n))
    run_of = np.repeat(np.arange(first.size), counts)
    bucket = np.frexp(counts.astype(np.float64))[1]  # floor(log2(count)) + 1
    by_bucket = np.argsort(bucket, kind="stable")
    cell0 = np.empty(first.size, np.int64)  # first score cell of each run
    buckets, off = [], 0
    for grp in np.split(by_bucket, np.flatnonzero(np.diff(bucket[by_bucket])) + 1):
        L = max(front + int(counts[grp].max()), K)
        cell0[grp] = off + np.arange(grp.size) * L + front
        buckets.append((off, grp.size, L, cs[first[grp]]))
        off += grp.size * L
    gidx = np.full(off, n, np.intp)
    gidx[cell0[run_of] + (np.arange(n) - first[run_of])] = order
    return gidx, buckets


def finish_sum(T: np.ndarray) -> np.ndarray:
    """(rows, C, K) running top-K values (-inf = no row) -> (rows, C) fp32 sums, added in float64. Overwrites T."""
    np.copyto(T, 0, where=np.isneginf(T))
    return np.add.reduce(T, axis=2, dtype=np.float64).astype(np.float32)


def sum_block(qcat: np.ndarray, G: np.ndarray, T: np.ndarray, tile: int, K: int, layout: tuple, carry: int | None,
              bufs: tuple) -> None:
    """agg="sum", CPU: one class-sorted gallery block's top-K per class into T (the query chunk's running top-K),
    `tile` query rows at a time. Every class but `carry` (the block's first class, when earlier blocks had rows of
    it too) is new: plain writes."""
    (gidx, buckets), (sbuf, pbuf) = layout, bufs
    n, cells = G.shape[0], gidx.size
    for s0 in range(0, qcat.shape[0], tile):
        s1 = min(qcat.shape[0], s0 + tile)
        S = sbuf[:(s1 - s0) * (n + 1)].reshape(s1 - s0, n + 1)  # last column -inf: the padding source
        gemm(qcat[s0:s1], G, out=S[:, :n])
        S[:, n] = -np.inf
        P = pbuf[:(s1 - s0) * cells].reshape(s1 - s0, cells)
        np.take(S, gidx, axis=1, out=P, mode="clip")
        Tv = T[s0:s1]
        old = None if carry is None else Tv[:, carry].copy()
        for off, ng, L, cidx in buckets:
            Pb = P[:, off:off + ng * L].reshape(s1 - s0, ng, L)
            if L > K:
                Pb.partition(L - K, axis=2)
            Tv[:, cidx] = Pb[:, :, L - K:]
        if old is not None:
            both = np.concatenate((old, Tv[:, carry]), axis=1)
            both.partition(K, axis=1)
            Tv[:, carry] = both[:, K:]
