"""Exact, memory-bounded class ranking: query embeddings vs a labelled gallery, per-class aggregate of summed
cosines: the max (agg="max", default) or the sum of the agg_k largest (agg="sum").

The full query x gallery matrix is never built: query chunks meet gallery blocks (sized by retrieval/knn.py's
Plan), and a running per-class state carries across blocks: the max (query chunk x classes) or, for agg="sum", the
agg_k largest values so far (query chunk x classes x agg_k, -inf where a class has had fewer rows), summed only at
the end. On CPU, agg="max" reads the gallery in its stored order, computes each block's scores transposed (gallery
rows x queries) and folds them into the transposed running max with torch's index_reduce_ (amax): one contiguous
vector max per gallery row, much faster than a per-class np.maximum.reduceat (docs/benchmarks.md). agg="sum" visits
the gallery in class-sorted order: each block's scores are gathered (one np.take) into a padded (rows, classes,
run) array and one partition along the last axis keeps each class's agg_k largest; classes are bucketed by run
length (powers of two) so padding at most doubles the cells. Class-sorted order means only a block's first class
can carry values from earlier blocks (one small merge); the CUDA path keeps natural order, so there each class's
running top-agg_k sits in front of its run's scores and torch.topk does the merge. Scores are fp32 dot products
of fp16/fp32 inputs (exact to ~1e-6 against float64; sums are added in float64); the CUDA path multiplies in fp16
with fp32 accumulation and output (queries rounded to fp16, so ~1e-3 from float64)."""
import warnings
from dataclasses import dataclass, replace

import numpy as np

from pipeline.core.device import pick_device
from pipeline.core.errors import UserError
from pipeline.core.io import drop_pages
from pipeline.retrieval.knn import Plan, cast_into, gemm, gemm_backend, top_columns
from pipeline.retrieval.search import Search, build_index, rank_candidates
from pipeline.retrieval.topk_sum import finish_sum, sum_block, sum_layout

_OOM_HALVINGS = 3  # CUDA: halve the chunk sizes this many times before finishing on the CPU


@dataclass(frozen=True)
class _Job:
    """One rank() call, checked: per-model queries and gallery arrays, model weights, each gallery row's dense
    class index (cls) and each index's class code (uniq), k, K = agg_k for agg="sum" (0: per-class max), and the
    byte budget."""
    qs: list
    gs: list
    w: np.ndarray
    cls: np.ndarray
    uniq: np.ndarray
    k: int
    K: int
    budget: int


def rank(queries, gallery, gallery_labels, k: int = 5, weights=None, max_memory: int = 2 << 30,
         device: str = "auto", log=print, agg: str = "max", agg_k: int = 3, search: Search | None = None,
         index=None) -> tuple[np.ndarray, np.ndarray]:
    """queries: one (Q, D_m) array per model (list) or a single array; gallery: matching list of (N, D_m) arrays
    (float16 normally, may be np.memmap; rows are L2-normalised per model); gallery_labels: (N,) int class codes
    in [0, C). Score of query q vs gallery row g = sum_m w_m * <q_m, g_m> (equal weights by default = sum of
    cosines). Class score: agg="max" (default) the max over that class's gallery rows; agg="sum" the sum of its
    agg_k largest row scores (a class with fewer than agg_k rows sums all it has; agg_k=1 runs "max"). Returns
    (top_classes (Q,k) int64, top_scores (Q,k) float32), classes sorted by score descending, ties -> smaller
    class code first; if C < k pad with -1 / -inf. Only classes with at least one gallery row can be returned.
    max_memory bounds the extra bytes used (for agg="sum" the running state is Q-chunk x C x agg_k floats).
    search: None or kind "exact" (every row, as above), or "ivf" / "hnsw": classes ranked from each query's
    candidate rows found by a faiss index (retrieval/search.py), built here unless `index` (a build_index() of
    this gallery and weights) is given."""
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
    job = _Job(qs, gs, w, cls, uniq, k, K, max(int(max_memory), 1))
    if index is not None or (search is not None and search.kind != "exact"):
        if index is None:
            index = build_index(gs, w, search, job.budget)
            log(f"rank: search={search.kind}: faiss index of {labels.size} rows built in "
                f"{index.train_s + index.add_s:.1f}s; ranking {Q} queries on {search.candidates} candidates each")
        rank_candidates(job, index, out_c, out_s)
        return out_c, out_s
    done = 0
    dev = _torch_device(device)
    if dev is not None:
        done = _rank_cuda(job, dev, log, out_c, out_s)
    if done < Q:
        _rank_cpu(replace(job, qs=[q[done:] for q in qs]), out_c[done:], out_s[done:])
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


def _torch_device(device):
    """rank's torch device for `device` ('auto', 'cpu', 'cuda[:N]'): None runs the numpy CPU path."""
    dev = pick_device(device)
    if dev == "cpu":
        return None
    import torch

    return torch.device(dev)


def _top(S, job, out_c, out_s):
    """The job's top-k classes of each row of S (rows x dense classes) into out_c / out_s."""
    cols, vals = top_columns(S, job.k)
    out_c[:, :cols.shape[1]] = job.uniq[cols]
    out_s[:, :cols.shape[1]] = vals


def _rank_cpu(job, out_c, out_s):
    """The CPU path (fp32, exact), into out_c / out_s: see the module docstring."""
    Q, N, C, K = job.qs[0].shape[0], job.cls.size, job.uniq.size, job.K
    dims = [q.shape[1] for q in job.qs]
    offs = np.cumsum([0] + dims)
    # agg="max" reads the gallery in its own order (index_reduce takes any class order); agg="sum" class-sorted
    perm = np.argsort(job.cls, kind="stable") if K else None
    if perm is not None and bool(np.all(perm == np.arange(N))):
        perm = None
    cs = job.cls if perm is None else job.cls[perm]
    q = job.qs[0]
    direct_q = len(job.qs) == 1 and job.w[0] == 1 and q.dtype == np.float32 and q.flags.c_contiguous
    plan = Plan.rank_cpu(job.budget, Q, N, C, dims, K, not direct_q, perm is not None)
    B, Qc = plan.block, plan.tile
    gbuf = np.empty(B * offs[-1], np.float32)
    tmp16 = None if perm is None else [np.empty((B, d), g.dtype) for d, g in zip(dims, job.gs)]
    qbuf = None if direct_q else np.empty((plan.chunk, offs[-1]), np.float32)
    if K:
        bufs = np.empty(Qc * (B + 1), np.float32), np.empty(Qc * (2 * B + min(B, C) * K), np.float32)
    else:
        import torch

        sbuf = np.empty(Qc * B, np.float32) if gemm_backend() == "numpy" else None  # oneDNN returns its own
        cls_t = torch.from_numpy(cs)
    for q0 in range(0, Q, plan.chunk):
        q1 = min(Q, q0 + plan.chunk)
        if direct_q:
            qcat = q[q0:q1]
        else:  # weights folded into the queries: one long dot product per pair covers all models
            qcat = qbuf[:q1 - q0]
            for m, qm in enumerate(job.qs):
                np.multiply(qm[q0:q1], np.float32(job.w[m]), out=qcat[:, offs[m]:offs[m + 1]], dtype=np.float32)
        # agg="max" keeps the running max transposed (classes x queries): index_reduce_ then folds each gallery
        # row's scores into its class's row with one contiguous vector max
        M = np.full((q1 - q0, C, K) if K else (C, q1 - q0), -np.inf, np.float32)
        for a in range(0, N, B):
            b = min(N, a + B)
            G = gbuf[:(b - a) * offs[-1]].reshape(b - a, offs[-1])
            for m, g in enumerate(job.gs):
                # mode="clip" skips numpy's defensive copy of `out`; the indices are valid anyway
                src = g[a:b] if perm is None else np.take(g, perm[a:b], axis=0, out=tmp16[m][:b - a], mode="clip")
                cast_into(G[:, offs[m]:offs[m + 1]], src)
                drop_pages(g)  # the block is in G: its pages need not stay in this process (a memmap)
            if K:  # class-sorted: only the block's first class can have rows in earlier blocks
                carry = cs[a] if a and cs[a - 1] == cs[a] else None
                sum_block(qcat, G, M, Qc, K, sum_layout(cs[a:b], K, 0), carry, bufs)
                continue
            for s0 in range(0, q1 - q0, Qc):
                s1 = min(q1 - q0, s0 + Qc)
                St = gemm(G, qcat[s0:s1], None if sbuf is None else sbuf[:(b - a) * (s1 - s0)].reshape(b - a, -1))
                _max_into(M[:, s0:s1], cls_t[a:b], St)
        _top(finish_sum(M) if K else np.ascontiguousarray(M.T), job, out_c[q0:q1], out_s[q0:q1])


def _max_into(MT, idx, St):
    """MT[idx[i]] = max(MT[idx[i]], St[i]) for every row i (classes x queries, numpy views), in place; idx is a
    torch int64 tensor. index_reduce_ is marked beta (its warning silenced); its amax is exact. It keeps torch's
    threads: on one thread (like the cast) a paper-scale bench run measured slower."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.from_numpy(MT).index_reduce_(0, idx, torch.from_numpy(St), "amax", include_self=True)


def _mm(q, g):
    import torch

    if q.device.type == "cuda":  # fp16 tensor cores, fp32 accumulate and output
        try:
            return torch.mm(q, g.T, out_dtype=torch.float32)
        except TypeError:  # a torch without mm's out_dtype (a Kaggle image may be older): fp16 output, upcast
            return torch.mm(q, g.T).float()
    return torch.mm(q.float(), g.float().T)  # lets tests run this path on CPU


def _rank_cuda(job, dev, log, out_c, out_s):
    """Rank on a torch device; returns how many queries (a prefix) it finished. On out-of-memory the plan is
    halved up to _OOM_HALVINGS times, then the rest is left to the CPU path."""
    import torch

    Q = job.qs[0].shape[0]
    plan = Plan.rank_cuda(job.budget, Q, job.cls.size, job.uniq.size, sum(q.shape[1] for q in job.qs), job.K)
    cls_t = None if job.K else torch.from_numpy(job.cls).to(dev)
    q0, halvings = 0, 0
    while q0 < Q:
        q1 = min(Q, q0 + plan.chunk)
        try:
            M = _cuda_chunk(job, plan, dev, cls_t, q0, q1)
        except torch.cuda.OutOfMemoryError:
            M = None  # freed with the traceback, once this handler has ended
        if M is not None:
            _top(finish_sum(M) if job.K else M, job, out_c[q0:q1], out_s[q0:q1])
            q0 = q1
            continue
        torch.cuda.empty_cache()
        halvings += 1
        if halvings > _OOM_HALVINGS or (plan.chunk == 1 and plan.block == 1):
            log(f"rank: CUDA out of memory after {halvings - 1} halvings; ranking queries {q0}..{Q} on the CPU")
            return q0
        plan = plan.halved()
        log(f"rank: CUDA out of memory; retrying with {plan.chunk} queries x {plan.block} gallery rows per chunk")
    return Q


def _upload(arrays, a, b, dev):
    import torch

    with warnings.catch_warnings():  # read-only memmaps: torch warns about writability; we only read
        warnings.simplefilter("ignore", UserWarning)
        out = [torch.from_numpy(np.ascontiguousarray(x[a:b])).to(dev, torch.float16) for x in arrays]
    for x in arrays:  # uploaded: a memmap's pages need not stay in this process
        drop_pages(x)
    return out


def _cuda_chunk(job, plan, dev, cls_t, q0, q1):
    """Queries q0..q1 against the whole gallery on `dev`: the (q1 - q0, C) running max, or (.., C, K) top-K, as a
    host array. Natural gallery order: blocks upload as contiguous slices and scatter_reduce(amax) does the
    per-class max exactly; for agg="sum" each tile is gathered into sum_layout's padded cells and topk keeps each
    class's K largest."""
    import torch

    K, w = job.K, job.w
    Qt = _upload(job.qs, q0, q1, dev)
    M = torch.full((q1 - q0, job.uniq.size, K) if K else (q1 - q0, job.uniq.size), -torch.inf, device=dev)
    for a in range(0, job.cls.size, plan.block):
        b = min(job.cls.size, a + plan.block)
        G = _upload(job.gs, a, b, dev)
        if K:
            gidx, buckets = sum_layout(job.cls[a:b], K, K)
            pad = torch.from_numpy(gidx == b - a).to(dev)
            gidx = torch.from_numpy(np.minimum(gidx, b - a - 1)).to(dev)
            buckets = [(off, ng, L, torch.from_numpy(ci).to(dev)) for off, ng, L, ci in buckets]
        for s0 in range(0, q1 - q0, plan.tile):
            s1 = min(q1 - q0, s0 + plan.tile)
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
        G = S = part = Tv = Pb = gidx = pad = buckets = None  # freed before the next block uploads
    return M.cpu().numpy()


def encode(labels, classes) -> np.ndarray:
    """Class codes (positions in `classes`) of labels."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[x] for x in labels], dtype=np.int64)
