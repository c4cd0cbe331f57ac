"""Kaggle MAP@k with one true label per query (Hotel-ID's metric): 1/rank of the first correct label, else 0;
instance-level retrieval metrics over ranked gallery items (mAP@k, acc@1, precision@k, recall@k); and the
class-level MAP@5 of embeddings searched leave-one-out (each query against the others)."""
import numpy as np

from pipeline.retrieval.knn import nearest
from pipeline.retrieval.rank import rank


def average_precision_at_k(pred_row, true_label, k=5):
    """1/rank of true_label within the first k predictions, 0 if absent. A label repeated in the row counts only
    at its first position (later duplicates earn nothing but still use up a position)."""
    # the first match is the one that counts, so duplicates need no special case
    for i, p in enumerate(list(pred_row)[:k]):
        if p == true_label:
            return 1.0 / (i + 1)
    return 0.0


def map_at_k(predictions, truth, k=5, balanced=False):
    """Mean of average_precision_at_k over queries. predictions: per-query label sequences (best first);
    truth: one label per query. Labels may be str or int, but compare as given ("1" != 1). balanced: each true
    class weighted equally (the mean over classes of their queries' mean), so big classes, which draw more
    validation queries and are easier, do not dominate: nearer a test set of a few photos per class."""
    predictions, truth = list(predictions), list(truth)
    if len(predictions) != len(truth):
        raise ValueError(f"map_at_k: {len(predictions)} prediction rows for {len(truth)} true labels")
    if not truth:
        return 0.0
    ap = [average_precision_at_k(p, t, k) for p, t in zip(predictions, truth)]
    if not balanced:
        return sum(ap) / len(truth)
    per_class = {}
    for a, t in zip(ap, truth):
        per_class.setdefault(t, []).append(a)
    return sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)


# Instance-level retrieval metrics (seed 000's Accuracy@1 / Precision@k, seed 001's mAP@k, seed 002's
# Recall@K). Input: per query, the relevance of its ranked gallery items (True where the item's label is the
# query's) and M_q, the number of relevant items in the whole gallery (the query itself excluded when query
# set = gallery). A query with M_q = 0 scores 0 on every metric and still counts in the mean: a query the
# gallery cannot answer is a miss, not a query to drop (the class-level map_at_k treats it the same way).


def relevance(ranked_labels, query_labels):
    """(Q, K) bool: ranked_labels[q][i] == query_labels[q]. Rows shorter than the longest are padded False."""
    ranked_labels = [list(r) for r in ranked_labels]
    width = max((len(r) for r in ranked_labels), default=0)
    rel = np.zeros((len(ranked_labels), width), bool)
    for q, (row, label) in enumerate(zip(ranked_labels, query_labels)):
        rel[q, :len(row)] = [x == label for x in row]
    return rel


def instance_ap_at_k(rel, n_relevant, k):
    """Seed 001's AP@k per query: 1/min(k, M_q) * sum_{i<=k} P@i * rel(i), P@i = relevant in top i / i.
    rel: (Q, K) bool ranked relevance, n_relevant: (Q,) M_q. 0 where M_q = 0. Returns (Q,) float64."""
    rel = np.asarray(rel, bool)[:, :k].astype(np.float64)
    m = np.asarray(n_relevant, np.float64)
    if rel.shape[0] != m.shape[0]:
        raise ValueError(f"instance_ap_at_k: {rel.shape[0]} relevance rows for {m.shape[0]} M_q values")
    prec = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denom = np.minimum(k, m)
    return np.divide((prec * rel).sum(axis=1), denom, out=np.zeros_like(denom), where=denom > 0)


def instance_metrics(rel, n_relevant, ks, metrics=("mAP@k", "acc@1", "precision@k", "recall@k")):
    """Means over queries, one entry per metric and k: 'mAP@5' (instance_ap_at_k), 'acc@1' (top item relevant),
    'precision@5' (relevant in the top 5 / 5, even where the gallery holds fewer than 5 items or M_q < 5),
    'recall@5' (1 if any relevant item is in the top 5, else 0: seed 002's Recall@K, the hit rate, not the
    fraction of the M_q relevant items found)."""
    rel = np.asarray(rel, bool)
    n = rel.shape[0]
    mean = lambda x: float(np.mean(x)) if n else 0.0
    out = {}
    for name in metrics:
        if name == "acc@1":
            out["acc@1"] = mean(rel[:, :1].any(axis=1))
            continue
        for k in ks:
            top = rel[:, :k]
            if name == "mAP@k":
                out[f"mAP@{k}"] = mean(instance_ap_at_k(rel, n_relevant, k))
            elif name == "precision@k":
                out[f"precision@{k}"] = mean(top.sum(axis=1) / k)
            elif name == "recall@k":
                out[f"recall@{k}"] = mean(top.any(axis=1))
            else:
                raise ValueError(f"instance_metrics: unknown metric '{name}'")
    return out


def class_map5_leave_one_out(emb: np.ndarray, labels, max_memory: int = 2 << 30) -> float:
    """Kaggle class-level MAP@5 (map_at_k's) of each embedding row against the other rows, itself skipped: a class
    scores its best row, ties go to the smaller class, as retrieval/rank.py ranks. rank() has no self-exclusion, so
    its top 6 over all rows gives the order of the other classes (the query's own class, whose best row there may
    be the query itself, takes at most one of the 6 places), and the own class is re-scored by its best other row
    (nearest() within the class) and placed among them. emb: (n, D) L2-normalised; exact fp32, memory-bounded."""
    classes, codes = np.unique(np.asarray(labels, object).astype(str), return_inverse=True)
    n = len(codes)
    if n == 0:
        return 0.0
    e = np.asarray(emb)
    # on the CPU: the CUDA path rounds queries to fp16, and its class scores would not compare exactly with the
    # own class's fp32 score
    top, scores = rank(e, e, codes, k=6, max_memory=max_memory, device="cpu")
    own = np.full(n, -np.inf, np.float32)  # -inf: a class of one row, which the query cannot find
    order = np.argsort(codes, kind="stable")
    for rows in np.split(order, np.flatnonzero(np.diff(codes[order])) + 1):
        if rows.size > 1:
            x = e[rows]
            own[rows] = nearest(x, x, 1, max_memory, exclude=np.arange(rows.size)).scores[:, 0]
    c, t = codes[:, None], own[:, None]
    ahead = (top >= 0) & (top != c) & ((scores > t) | ((scores == t) & (top < c)))  # classes ranked before it
    better = ahead.sum(1)
    return float(np.where((better < 5) & np.isfinite(own), 1.0 / (better + 1), 0.0).sum() / n)
