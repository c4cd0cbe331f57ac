"""Class ranking of query embeddings against a labelled gallery, and its MAP@5."""
import numpy as np

from .metrics import map_at_k
from .rank import rank


def encode(labels, classes):
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[x] for x in labels], dtype=np.int64)


def top5(queries, gallery, gallery_labels, classes, max_memory=2 << 30, weights=None, log=print):
    """Top-5 class names per query. queries/gallery: one array per model (summed cosine similarities)."""
    codes, _ = rank(queries, gallery, encode(gallery_labels, classes), k=5, weights=weights,
                    max_memory=max_memory, log=log)
    return [[classes[c] for c in row if c >= 0] for row in codes]


def map5(queries, query_labels, gallery, gallery_labels, classes, **kw):
    return map_at_k(top5(queries, gallery, gallery_labels, classes, **kw), list(query_labels), k=5)
