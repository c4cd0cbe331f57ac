"""The k nearest gallery rows of each query (exact, memory-bounded)."""
import numpy as np


def topk_cosine(queries, gallery, k, max_memory=2 << 30, self_index=None, leave_one_out=False):
    """(indices (Q, k') int64, scores (Q, k') float32) of the k most cosine-similar gallery rows per query, best
    first; k' = min(k, gallery rows available). Inputs are L2-normalised (float16 normally); products are fp32
    over query chunks whose (chunk x gallery) score matrix and top-k fit max_memory beside the fp32 gallery copy.
    self_index: (Q,) the gallery row of each query (-1: none), never returned for it; leave_one_out=True is
    self_index = arange(Q) for queries that are the gallery."""
    import torch

    q, g = np.asarray(queries), np.asarray(gallery)
    if leave_one_out:
        if q.shape[0] != g.shape[0]:
            raise ValueError("leave_one_out needs queries = gallery")
        self_index = np.arange(q.shape[0])
    skip = None if self_index is None else np.asarray(self_index, np.int64).reshape(-1)
    if skip is not None and skip.shape[0] != q.shape[0]:
        raise ValueError(f"self_index: {skip.shape[0]} entries for {q.shape[0]} queries")
    n, d = g.shape
    kk = max(0, min(k, n - int(skip is not None and bool((skip >= 0).any()))))
    idx, sc = np.zeros((q.shape[0], kk), np.int64), np.zeros((q.shape[0], kk), np.float32)
    if kk == 0 or q.shape[0] == 0:
        return idx, sc
    gt = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float32))
    chunk = max(1, (int(max_memory) - gt.numel() * 4) // (4 * (n + d) + 12 * kk))
    for s in range(0, q.shape[0], chunk):
        S = torch.from_numpy(np.ascontiguousarray(q[s:s + chunk], dtype=np.float32)) @ gt.T
        if skip is not None:
            r = torch.from_numpy(skip[s:s + chunk])
            rows = torch.nonzero(r >= 0).flatten()
            S[rows, r[rows]] = -float("inf")
        top = S.topk(kk, dim=1)
        idx[s:s + chunk], sc[s:s + chunk] = top.indices.numpy(), top.values.numpy()
    return idx, sc
