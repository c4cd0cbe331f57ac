"""Exact, memory-bounded class ranking: query embeddings vs a labelled gallery, per-class aggregate of summed
cosines: the max (agg="max", default) or the sum of the agg_k largest (agg="sum").

The full query x gallery matrix is never built: query chunks meet gallery blocks, and a running per-class state
carries across blocks: the max (query chunk x classes) or, for agg="sum", the agg_k largest values so far (query
chunk x classes x agg_k, -inf where a class has had fewer rows), summed only at the end. On CPU, agg="max" reads
the gallery in its stored order, computes each block's scores transposed (gallery rows x queries) and folds them
into the transposed running max with torch's index_reduce_ (amax): one contiguous vector max per gallery row,
~9x faster than a per-class np.maximum.reduceat here. agg="sum" visits the gallery in class-sorted order: each
block's scores are gathered (one np.take) into a padded (rows, classes,
run) array and one partition along the last axis keeps each class's agg_k largest; classes are bucketed by run
length (powers of two) so padding at most doubles the cells. Class-sorted order means only a block's first class
can carry values from earlier blocks (one small merge); the CUDA path keeps natural order, so there each class's
running top-agg_k sits in front of its run's scores and torch.topk does the merge. Scores are fp32 dot products
of fp16/fp32 inputs (exact to ~1e-6 against float64; sums are added in float64); the CUDA path multiplies in fp16
with fp32 accumulation and output (queries rounded to fp16, so ~1e-3 from float64)."""
import warnings

import numpy as np

from pipeline.errors import UserError

_OOM_HALVINGS = 3  # CUDA: halve the chunk sizes this many times before finishing on the CPU
# CPU gallery blocks: up to 128 MB (fp32) and 1024 rows; score tiles up to 16 MB. The buffers are reused across
# blocks (page-faulting fresh memory every block cost more than the fp16 cast itself); oneDNN returns a fresh
# output per call, and tiles under glibc's 32 MB mmap threshold come back from the heap without page faults.
# Measured at 2000 x 45000 x 4096 with oneDNN: 1024-row blocks 1.68-1.70 s, 2048 1.71, 4096 1.84, 8192 1.99.
_BLOCK_BYTES = 128 << 20
_BLOCK_ROWS = 1024
_TILE_BYTES = 16 << 20


def rank(queries, gallery, gallery_labels, k=5, weights=None, max_memory=2 << 30, device="auto", log=print,
         agg="max", agg_k=3):
    """queries: one (Q, D_m) array per model (list) or a single array; gallery: matching list of (N, D_m) arrays
    (float16 normally, may be np.memmap; rows are L2-normalised per model); gallery_labels: (N,) int class codes
    in [0, C). Score of query q vs gallery row g = sum_m w_m * <q_m, g_m> (equal weights by default = sum of
    cosines). Class score: agg="max" (default) the max over that class's gallery rows; agg="sum" the sum of its
    agg_k largest row scores (a class with fewer than agg_k rows sums all it has; agg_k=1 runs "max"). Returns
    (top_classes (Q,k) int64, top_scores (Q,k) float32), classes sorted by score descending, ties -> smaller
    class code first; if C < k pad with -1 / -inf. Only classes with at least one gallery row can be returned.
    max_memory bounds the extra bytes used (for agg="sum" the running state is Q-chunk x C x agg_k floats)."""
    qs, gs, w, labels = _check(queries, gallery, gallery_labels, weights, k)
    if agg not in ("max", "sum"):
        raise UserError(f"rank: agg must be 'max' or 'sum', got {agg!r}")
    if isinstance(agg_k, (bool, np.bool_)) or not isinstance(agg_k, (int, np.integer)) or agg_k < 1:
        raise UserError(f"rank: agg_k must be an integer >= 1 (how many top rows per class agg='sum' adds), "
                        f"got {agg_k!r}")
    K = int(agg_k) if agg == "sum" and agg_k > 1 else 0  # 0: per-class max (the sum of the top one is the max)
    Q = qs[0].shape[0]
    out_c = np.full((Q, k), -1, np.int64)
    out_s = np.full((Q, k), -np.inf, np.float32)
    if Q == 0 or labels.size == 0:
        return out_c, out_s
    uniq, cls = np.unique(labels, return_inverse=True)  # cls: dense class index per gallery row, sorted like uniq
    budget = max(int(max_memory), 1)
    done = 0
    dev = _pick_device(device)
    if dev is not None:
        done = _rank_cuda(qs, gs, w, cls, uniq, k, budget, dev, log, out_c, out_s, K)
    if done < Q:
        _rank_cpu([q[done:] for q in qs], gs, w, cls, uniq, k, budget, out_c[done:], out_s[done:], K)
    return out_c, out_s


def _check(queries, gallery, gallery_labels, weights, k):
    qs = [queries] if isinstance(queries, np.ndarray) else list(queries)
    gs = [gallery] if isinstance(gallery, np.ndarray) else list(gallery)
    if not qs or len(qs) != len(gs):
        raise UserError(f"rank: {len(qs)} query array(s) but {len(gs)} gallery array(s); give one of each per model")
    labels = np.asarray(gallery_labels)
    if labels.ndim != 1 or (labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0)):
        raise UserError("rank: gallery_labels must be a 1-D array of non-negative integer class codes")
    for m, (q, g) in enumerate(zip(qs, gs)):
        if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
            raise UserError(f"rank: model {m}: queries {q.shape} and gallery {g.shape} must be 2-D with equal dims")
        if q.shape[0] != qs[0].shape[0] or g.shape[0] != labels.size:
            raise UserError(f"rank: model {m}: {q.shape[0]} queries / {g.shape[0]} gallery rows, expected "
                            f"{qs[0].shape[0]} / {labels.size} (one gallery label per row, same queries per model)")
    w = np.ones(len(qs)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.size != len(qs):
        raise UserError(f"rank: {w.size} weight(s) for {len(qs)} model(s)")
    if k < 1:
        raise UserError(f"rank: k must be >= 1, got {k}")
    return qs, gs, w, labels.astype(np.int64)


def _pick_device(device):
    if device == "cpu":
        return None
    try:
        import torch
    except ImportError:
        torch = None
    available = torch is not None and torch.cuda.is_available()
    if device == "auto":
        return torch.device("cuda") if available else None
    if str(device).startswith("cuda") and available:
        return torch.device(device)
    raise UserError(f"rank: device {device!r} is not available here; use 'cpu' or 'auto'")


_GEMM = None  # "onednn" or "numpy", picked on first use by _gemm_backend(); tests set it to run both


def _gemm_backend():
    """oneDNN's fp32 matmul (torch.ops.mkldnn._linear_pointwise, the op torch.compile emits for linear) on CPUs
    with AVX-512: it measured 1.7-1.8x numpy's OpenBLAS here (this machine pins OpenBLAS to its Haswell kernels
    with OPENBLAS_CORETYPE; oneDNN picks its AVX-512 brgemm itself) and is exact fp32 (no bf16 fpmath). numpy
    elsewhere, or when this torch build lacks the op."""
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


def _gemm_nt(a, b, out=None):
    """a @ b.T in fp32 (a, b: C-contiguous fp32 2-D arrays) with the faster backend; into `out` when given."""
    if _gemm_backend() == "numpy":
        return np.matmul(a, b.T, out=out)
    import torch

    a, b = _tensors(a, b)
    r = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "").numpy()
    if out is None:
        return r
    out[...] = r
    return out


def _tensors(*arrays):
    """torch views of numpy arrays. Read-only memmaps make torch warn about writability; we only read them."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [torch.from_numpy(np.asarray(a)) for a in arrays]


def _cast_into(dst, src):
    """Copy (and upcast) src into the fp32 view dst. torch's fp16->fp32 conversion is ~10x numpy's here."""
    import torch

    # One thread: BLAS's threads are still spinning from the last matmul, and a multi-threaded copy fighting them
    # measured slower end to end than this single-threaded one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dst_t, src_t = _tensors(dst, src)
        dst_t.copy_(src_t)
    finally:
        torch.set_num_threads(threads)


def _topk(S, k, uniq, out_c, out_s):
    """Top-k columns of each row of S (rows x C) by value desc, ties -> smaller column; written into out_*.

    torch.topk of k+1 (threaded, small outputs) instead of np.argpartition: the latter's (rows x C) int64 result
    cost 40-130 ms of fresh pages per 2000 x 3116 call inside rank, vs ~5 ms here. Row order among the kept k is
    fixed by a lexsort; a row whose k-th and (k+1)-th values tie is redone with a stable argsort (rare)."""
    import torch

    n, C = S.shape
    kk = min(k, C)
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
    out_c[:, :kk] = uniq[part]
    out_s[:, :kk] = vals


def _sum_layout(bcls, K, front):
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


def _finish_sum(T):
    """(rows, C, K) running top-K values (-inf = no row) -> (rows, C) fp32 sums, added in float64. Overwrites T."""
    np.copyto(T, 0, where=np.isneginf(T))
    return np.add.reduce(T, axis=2, dtype=np.float64).astype(np.float32)


def _rank_cpu(qs, gs, w, cls, uniq, k, budget, out_c, out_s, K=0):
    Q, N, C = qs[0].shape[0], cls.size, uniq.size
    dims = [q.shape[1] for q in qs]
    Dt, offs = sum(dims), np.cumsum([0] + dims)
    # agg="max" reads the gallery in its own order (index_reduce takes any class order); agg="sum" class-sorted
    perm = np.argsort(cls, kind="stable") if K else None
    sorted_already = perm is None or bool(np.all(perm == np.arange(N)))
    cs = cls if sorted_already else cls[perm]
    direct_q = len(qs) == 1 and w[0] == 1 and qs[0].dtype == np.float32 and qs[0].flags.c_contiguous
    # budget: half to the query side of an outer chunk (running max + top-k temporaries ~20 B per class, plus the
    # weighted, concatenated fp32 queries), so the gallery is cast once per outer chunk - usually once in all;
    # of the rest, the fp32 gallery block (+ its fp16 gather temp) and the score tile
    # agg="sum" (K > 0): per class the running top-K (4K B), the isneginf mask and float64 sum of the finish; per
    # gallery row the block's layout indices; per tile row the scores (+ a -inf column), the padded cells (at most
    # runs * K + 2 B, runs <= min(B, C)) and the merge of a class carried over from the previous block (3K)
    q_row = C * (20 + (5 * K + 8 if K else 0)) + (0 if direct_q else Dt * 4)
    Qo = int(np.clip(budget // 2 // q_row, 1, Q))
    rest = max(budget - Qo * q_row, 1)
    row_bytes = Dt * 4 + (0 if sorted_already else max(dims) * 2) + ((K + 2) * 8 + 48 if K else 0)
    B = int(np.clip(min(min(rest // 2, _BLOCK_BYTES) // row_bytes, _BLOCK_ROWS), 1, N))
    tile_row = (3 * B + 1 + min(B, C) * K + 3 * K) * 4 if K else B * 4
    Qc = int(np.clip(min(rest - B * row_bytes, _TILE_BYTES) // tile_row, 1, Qo))
    gbuf = np.empty(B * Dt, np.float32)
    if K:
        sbuf = np.empty(Qc * (B + 1), np.float32)
        pbuf = np.empty(Qc * (2 * B + min(B, C) * K), np.float32)
    else:
        sbuf = np.empty(Qc * B, np.float32) if _gemm_backend() == "numpy" else None  # oneDNN returns its own
        import torch

        cls_t = torch.from_numpy(cs)
    qbuf = None if direct_q else np.empty((Qo, Dt), np.float32)
    tmp16 = None if sorted_already else [np.empty((B, d), g.dtype) for d, g in zip(dims, gs)]
    for q0 in range(0, Q, Qo):
        q1 = min(Q, q0 + Qo)
        if direct_q:
            qcat = qs[0][q0:q1]
        else:  # weights folded into the queries: one long dot product per pair covers all models
            qcat = qbuf[:q1 - q0]
            for m, q in enumerate(qs):
                np.multiply(q[q0:q1], np.float32(w[m]), out=qcat[:, offs[m]:offs[m + 1]], dtype=np.float32)
        # agg="max" keeps the running max transposed (classes x queries): index_reduce_ then folds each gallery
        # row's scores into its class's row with one contiguous vector max, ~9x faster here than reduceat
        M = np.full((q1 - q0, C, K) if K else (C, q1 - q0), -np.inf, np.float32)
        for a in range(0, N, B):
            b = min(N, a + B)
            G = gbuf[:(b - a) * Dt].reshape(b - a, Dt)
            for m, g in enumerate(gs):
                if sorted_already:
                    src = g[a:b]
                else:  # mode="clip" skips numpy's defensive copy of `out`; the indices are valid anyway
                    src = np.take(g, perm[a:b], axis=0, out=tmp16[m][:b - a], mode="clip")
                _cast_into(G[:, offs[m]:offs[m + 1]], src)
            if K:  # class-sorted: only the block's first class can have rows in earlier blocks
                carry = cs[a] if a and cs[a - 1] == cs[a] else None
                _sum_block(qcat, G, M, q0, q1, Qc, K, *_sum_layout(cs[a:b], K, 0), carry, sbuf, pbuf)
                continue
            for s0 in range(q0, q1, Qc):
                s1 = min(q1, s0 + Qc)
                St = _gemm_nt(G, qcat[s0 - q0:s1 - q0], None if sbuf is None else
                              sbuf[:(b - a) * (s1 - s0)].reshape(b - a, s1 - s0))
                _max_into(M[:, s0 - q0:s1 - q0], cls_t[a:b], St)
        _topk(_finish_sum(M) if K else np.ascontiguousarray(M.T), k, uniq, out_c[q0:q1], out_s[q0:q1])


def _max_into(MT, idx, St):
    """MT[idx[i]] = max(MT[idx[i]], St[i]) for every row i (classes x queries, numpy views), in place; idx is a
    torch int64 tensor. index_reduce_ is marked beta (its warning silenced); its amax is exact. It keeps torch's
    threads: on one thread (like the cast) one full paper-scale bench run took 52.9 s, vs 48.5 and 50.0 s with them."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(MT).index_reduce_(0, idx, torch.from_numpy(St), "amax", include_self=True)


def _sum_block(qcat, G, T, q0, q1, Qc, K, gidx, buckets, carry, sbuf, pbuf):
    """agg="sum", CPU: one class-sorted gallery block's top-K per class into T (rows of queries q0..q1). Every
    class but `carry` (the block's first class, when earlier blocks had rows of it too) is new: plain writes."""
    n = G.shape[0]
    cells = gidx.size
    for s0 in range(q0, q1, Qc):
        s1 = min(q1, s0 + Qc)
        S = sbuf[:(s1 - s0) * (n + 1)].reshape(s1 - s0, n + 1)  # last column -inf: the padding source
        _gemm_nt(qcat[s0 - q0:s1 - q0], G, out=S[:, :n])
        S[:, n] = -np.inf
        P = pbuf[:(s1 - s0) * cells].reshape(s1 - s0, cells)
        np.take(S, gidx, axis=1, out=P, mode="clip")
        Tv = T[s0 - q0:s1 - q0]
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


def _mm(q, g):
    import torch

    if q.device.type == "cuda":  # fp16 tensor cores, fp32 accumulate and output
        try:
            return torch.mm(q, g.T, out_dtype=torch.float32)
        except TypeError:  # a torch without mm's out_dtype (a Kaggle image may be older): fp16 output, upcast
            return torch.mm(q, g.T).float()
    return torch.mm(q.float(), g.float().T)  # lets tests run this path on CPU


def _rank_cuda(qs, gs, w, cls, uniq, k, budget, dev, log, out_c, out_s, K=0):
    """Rank on a torch device; returns how many queries (a prefix) it finished. Natural gallery order here:
    blocks upload as contiguous slices and scatter_reduce(amax) does the per-class max exactly; for agg="sum"
    (K > 0) each tile is gathered into _sum_layout's padded cells and topk keeps each class's K largest."""
    import torch

    Q, N, C = qs[0].shape[0], cls.size, uniq.size
    Dt = sum(q.shape[1] for q in qs)
    # per query row: running max (fp32) + its fp16 queries; per gallery row: fp16 block; per tile cell: the fp32
    # product, a model's partial product and the int64 scatter index (an expanded view, so no memory).
    # agg="sum": per query row the running top-K and, on the host, _finish_sum's temporaries; per gallery row the
    # layout (index, mask); per tile row also the padded cells (<= runs * K + 2 B), the gathered running top-K and
    # topk's values + int64 indices (runs <= min(B, C))
    q_row = (C * (5 * K + 28) if K else C * 4) + Dt * 2
    Qo = int(np.clip(budget // 4 // q_row, 1, Q))
    rest = max(budget - Qo * q_row, 1)
    B = int(np.clip(rest // 2 // (Dt * 2 + ((K + 2) * 17 + 48 if K else 0)), 1, N))
    Qc = int(np.clip(rest // 2 // ((16 * B + 20 * min(B, C) * K) if K else B * 8), 1, Qo))
    cls_t = None if K else torch.from_numpy(cls).to(dev)
    q0, halvings = 0, 0
    while q0 < Q:
        q1 = min(Q, q0 + Qo)
        try:
            with warnings.catch_warnings():  # read-only memmaps: torch warns about writability; we only read
                warnings.simplefilter("ignore", UserWarning)
                Qt = [torch.from_numpy(np.ascontiguousarray(q[q0:q1])).to(dev, torch.float16) for q in qs]
            M = torch.full((q1 - q0, C, K) if K else (q1 - q0, C), -torch.inf, device=dev)
            for a in range(0, N, B):
                b = min(N, a + B)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    G = [torch.from_numpy(np.ascontiguousarray(g[a:b])).to(dev, torch.float16) for g in gs]
                if K:
                    gidx, buckets = _sum_layout(cls[a:b], K, K)
                    pad = torch.from_numpy(gidx == b - a).to(dev)
                    gidx = torch.from_numpy(np.minimum(gidx, b - a - 1)).to(dev)
                    buckets = [(off, ng, L, torch.from_numpy(ci).to(dev)) for off, ng, L, ci in buckets]
                for s0 in range(0, q1 - q0, Qc):
                    s1 = min(q1 - q0, s0 + Qc)
                    S = None
                    for m, g in enumerate(G):
                        part = _mm(Qt[m][s0:s1], g)
                        S = part.mul_(float(w[m])) if S is None else S.add_(part, alpha=float(w[m]))
                    if not K:
                        M[s0:s1].scatter_reduce_(1, cls_t[a:b].expand(s1 - s0, -1), S, "amax")
                        continue
                    part = None  # (it aliases S)
                    S = S.index_select(1, gidx).masked_fill_(pad, -torch.inf)  # the padded cells
                    Tv = M[s0:s1]
                    for off, ng, L, ci in buckets:
                        Pb = S[:, off:off + ng * L].view(s1 - s0, ng, L)
                        Pb[:, :, :K] = Tv[:, ci]
                        Tv[:, ci] = Pb.topk(K, dim=2, sorted=False).values
                G = S = part = Tv = Pb = gidx = pad = buckets = None
            M = M.cpu().numpy()
            _topk(_finish_sum(M) if K else M, k, uniq, out_c[q0:q1], out_s[q0:q1])
            q0 = q1
        except torch.cuda.OutOfMemoryError:
            Qt = M = G = S = part = Tv = Pb = gidx = pad = buckets = None
            torch.cuda.empty_cache()
            halvings += 1
            if halvings > _OOM_HALVINGS or (Qo == 1 and B == 1):
                log(f"rank: CUDA out of memory after {halvings - 1} halvings; ranking queries {q0}..{Q} on the CPU")
                return q0
            Qo, B, Qc = max(1, Qo // 2), max(1, B // 2), max(1, Qc // 2)
            log(f"rank: CUDA out of memory; retrying with {Qo} queries x {B} gallery rows per chunk")
    return Q
