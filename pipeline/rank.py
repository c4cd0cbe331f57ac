"""Exact, memory-bounded class ranking: query embeddings vs a labelled gallery, per-class max of summed cosines.

The full query x gallery matrix is never built: query chunks meet gallery blocks, and a running per-class max
(query chunk x classes) carries across blocks. On CPU the gallery is visited in class-sorted order, so the max
over a class's rows inside a block is one `np.maximum.reduceat` over contiguous columns. Scores are fp32 dot
products of fp16/fp32 inputs (exact to ~1e-6 against float64); the CUDA path multiplies in fp16 with fp32
accumulation and output (queries rounded to fp16, so ~1e-3 from float64)."""
import warnings

import numpy as np

from .errors import UserError

_OOM_HALVINGS = 3  # CUDA: halve the chunk sizes this many times before finishing on the CPU
# CPU: bigger blocks/tiles than this buy no matmul speed here; smaller, reused buffers avoid page-faulting
# fresh memory every block (which cost more than the fp16->fp32 cast itself)
_BLOCK_BYTES = 128 << 20
_TILE_BYTES = 128 << 20


def rank(queries, gallery, gallery_labels, k=5, weights=None, max_memory=2 << 30, device="auto", log=print):
    """queries: one (Q, D_m) array per model (list) or a single array; gallery: matching list of (N, D_m) arrays
    (float16 normally, may be np.memmap; rows are L2-normalised per model); gallery_labels: (N,) int class codes
    in [0, C). Score of query q vs gallery row g = sum_m w_m * <q_m, g_m> (equal weights by default = sum of
    cosines). Class score = max over that class's gallery rows. Returns (top_classes (Q,k) int64, top_scores (Q,k)
    float32), classes sorted by score descending, ties -> smaller class code first; if C < k pad with -1 / -inf.
    Only classes with at least one gallery row can be returned. max_memory bounds the extra bytes used."""
    qs, gs, w, labels = _check(queries, gallery, gallery_labels, weights, k)
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
        done = _rank_cuda(qs, gs, w, cls, uniq, k, budget, dev, log, out_c, out_s)
    if done < Q:
        _rank_cpu([q[done:] for q in qs], gs, w, cls, uniq, k, budget, out_c[done:], out_s[done:])
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


def _cast_into(dst, src):
    """Copy (and upcast) src into the fp32 view dst. torch's fp16->fp32 conversion is ~10x numpy's here."""
    try:
        import torch
    except ImportError:
        dst[...] = src
        return
    # One thread: BLAS's threads are still spinning from the last matmul, and a multi-threaded copy fighting them
    # measured slower end to end than this single-threaded one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():  # read-only memmaps: torch warns about writability, but we only read
            warnings.simplefilter("ignore", UserWarning)
            torch.from_numpy(dst).copy_(torch.from_numpy(np.asarray(src)))
    finally:
        torch.set_num_threads(threads)


def _topk(S, k, uniq, out_c, out_s):
    """Top-k columns of each row of S (rows x C) by value desc, ties -> smaller column; written into out_*."""
    n, C = S.shape
    kk = min(k, C)
    if kk < C:
        part = np.argpartition(S, C - kk, axis=1)[:, C - kk:]
    else:
        part = np.broadcast_to(np.arange(C), (n, C)).copy()
    vals = np.take_along_axis(S, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    part = np.take_along_axis(part, order, 1)
    vals = np.take_along_axis(vals, order, 1)
    # argpartition breaks ties at the k-th value arbitrarily: redo those (rare) rows with a stable sort
    if kk < C:
        tied = np.flatnonzero((S >= vals[:, -1:]).sum(1) > kk)
        for r in tied:
            part[r] = np.argsort(-S[r], kind="stable")[:kk]
            vals[r] = S[r, part[r]]
    out_c[:, :kk] = uniq[part]
    out_s[:, :kk] = vals


def _rank_cpu(qs, gs, w, cls, uniq, k, budget, out_c, out_s):
    Q, N, C = qs[0].shape[0], cls.size, uniq.size
    dims = [q.shape[1] for q in qs]
    Dt, offs = sum(dims), np.cumsum([0] + dims)
    perm = np.argsort(cls, kind="stable")
    sorted_already = bool(np.all(perm == np.arange(N)))
    cs = cls[perm]
    # class c occupies sorted positions [run_start[c], run_start[c+1])
    run_start = np.searchsorted(cs, np.arange(C + 1))
    direct_q = len(qs) == 1 and w[0] == 1 and qs[0].dtype == np.float32 and qs[0].flags.c_contiguous
    # budget: half to the query side of an outer chunk (running max + top-k temporaries ~20 B per class, plus the
    # weighted, concatenated fp32 queries), so the gallery is cast once per outer chunk - usually once in all;
    # of the rest, the fp32 gallery block (+ its fp16 gather temp) and the score tile (+ reduceat output)
    q_row = C * 20 + (0 if direct_q else Dt * 4)
    Qo = int(np.clip(budget // 2 // q_row, 1, Q))
    rest = max(budget - Qo * q_row, 1)
    row_bytes = Dt * 4 + (0 if sorted_already else max(dims) * 2)
    B = int(np.clip(min(rest // 2, _BLOCK_BYTES) // row_bytes, 1, N))
    Qc = int(np.clip(min(rest - B * row_bytes, _TILE_BYTES) // ((B + min(B, C)) * 4), 1, Qo))
    gbuf = np.empty(B * Dt, np.float32)
    sbuf = np.empty(Qc * B, np.float32)
    rbuf = np.empty(Qc * min(B, C), np.float32)
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
        M = np.full((q1 - q0, C), -np.inf, np.float32)
        for a in range(0, N, B):
            b = min(N, a + B)
            G = gbuf[:(b - a) * Dt].reshape(b - a, Dt)
            for m, g in enumerate(gs):
                if sorted_already:
                    src = g[a:b]
                else:  # mode="clip" skips numpy's defensive copy of `out`; the indices are valid anyway
                    src = np.take(g, perm[a:b], axis=0, out=tmp16[m][:b - a], mode="clip")
                _cast_into(G[:, offs[m]:offs[m + 1]], src)
            c0, c1 = cs[a], cs[b - 1] + 1
            starts = np.concatenate(([0], run_start[c0 + 1:c1] - a))
            for s0 in range(q0, q1, Qc):
                s1 = min(q1, s0 + Qc)
                S = sbuf[:(s1 - s0) * (b - a)].reshape(s1 - s0, b - a)
                np.matmul(qcat[s0 - q0:s1 - q0], G.T, out=S)
                R = rbuf[:(s1 - s0) * (c1 - c0)].reshape(s1 - s0, c1 - c0)
                np.maximum.reduceat(S, starts, axis=1, out=R)
                Mv = M[s0 - q0:s1 - q0, c0:c1]
                np.maximum(Mv, R, out=Mv)
        _topk(M, k, uniq, out_c[q0:q1], out_s[q0:q1])


def _mm(q, g):
    import torch

    if q.device.type == "cuda":  # fp16 tensor cores, fp32 accumulate and output
        return torch.mm(q, g.T, out_dtype=torch.float32)
    return torch.mm(q.float(), g.float().T)  # lets tests run this path on CPU


def _rank_cuda(qs, gs, w, cls, uniq, k, budget, dev, log, out_c, out_s):
    """Rank on a torch device; returns how many queries (a prefix) it finished. Natural gallery order here:
    blocks upload as contiguous slices and scatter_reduce(amax) does the per-class max exactly."""
    import torch

    Q, N, C = qs[0].shape[0], cls.size, uniq.size
    Dt = sum(q.shape[1] for q in qs)
    # per query row: running max (fp32) + its fp16 queries; per gallery row: fp16 block; per tile cell: the fp32
    # product, a model's partial product and the int64 scatter index (an expanded view, so no memory)
    q_row = C * 4 + Dt * 2
    Qo = int(np.clip(budget // 4 // q_row, 1, Q))
    rest = max(budget - Qo * q_row, 1)
    B = int(np.clip(rest // 2 // (Dt * 2), 1, N))
    Qc = int(np.clip(rest // 2 // (B * 8), 1, Qo))
    cls_t = torch.from_numpy(cls).to(dev)
    q0, halvings = 0, 0
    while q0 < Q:
        q1 = min(Q, q0 + Qo)
        try:
            with warnings.catch_warnings():  # read-only memmaps: torch warns about writability; we only read
                warnings.simplefilter("ignore", UserWarning)
                Qt = [torch.from_numpy(np.ascontiguousarray(q[q0:q1])).to(dev, torch.float16) for q in qs]
            M = torch.full((q1 - q0, C), -torch.inf, device=dev)
            for a in range(0, N, B):
                b = min(N, a + B)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    G = [torch.from_numpy(np.ascontiguousarray(g[a:b])).to(dev, torch.float16) for g in gs]
                for s0 in range(0, q1 - q0, Qc):
                    s1 = min(q1 - q0, s0 + Qc)
                    S = None
                    for m, g in enumerate(G):
                        part = _mm(Qt[m][s0:s1], g)
                        S = part.mul_(float(w[m])) if S is None else S.add_(part, alpha=float(w[m]))
                    M[s0:s1].scatter_reduce_(1, cls_t[a:b].expand(s1 - s0, -1), S, "amax")
                G = S = part = None
            _topk(M.cpu().numpy(), k, uniq, out_c[q0:q1], out_s[q0:q1])
            q0 = q1
        except torch.cuda.OutOfMemoryError:
            Qt = M = G = S = part = None
            torch.cuda.empty_cache()
            halvings += 1
            if halvings > _OOM_HALVINGS or (Qo == 1 and B == 1):
                log(f"rank: CUDA out of memory after {halvings - 1} halvings; ranking queries {q0}..{Q} on the CPU")
                return q0
            Qo, B, Qc = max(1, Qo // 2), max(1, B // 2), max(1, Qc // 2)
            log(f"rank: CUDA out of memory; retrying with {Qo} queries x {B} gallery rows per chunk")
    return Q
