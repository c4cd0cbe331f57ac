"""Picture helpers: a thumbnail of an image file, the queries a picture shows, and each shown query's top
classes with its best-matching gallery row (show, the training logbook and search-text draw with them)."""

import numpy as np

THUMB = 256  # longest side of a drawn image, in pixels


def pick_queries(n_val, n, seed=None):
    """Indices of the shown validation rows: n drawn without replacement by a seeded RNG (sorted), or the first n."""
    n = min(n, n_val)
    if seed is None:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n_val, n, replace=False))


def best_matches(queries: list, gallery: list, codes, k: int = 5,
                 max_memory: int = 256 << 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top classes of a few queries and each one's best gallery row. queries/gallery: one (Q, D_m) / (N, D_m)
    array per model; codes: (N,) int class code per gallery row. Returns (classes, scores, rows), each (Q, k') with
    k' = min(k, classes in the gallery): the top classes by per-class max of the summed cosines (rank() on the CPU,
    exact fp32; ties: smaller code first) and, for each, its best gallery row (nearest() within the class; ties:
    the first row)."""
    from pipeline.retrieval.knn import nearest
    from pipeline.retrieval.rank import rank

    codes = np.asarray(codes, np.int64)
    kk = min(k, np.unique(codes).size)
    classes, scores = rank(queries, gallery, codes, k=max(kk, 1), max_memory=max_memory, device="cpu")
    classes, scores = classes[:, :kk], scores[:, :kk]
    rows = np.zeros(classes.shape, np.int64)
    for c in np.unique(classes):
        members = np.flatnonzero(codes == c)
        qi, slot = np.nonzero(classes == c)
        # the models side by side: one dot product of the concatenated rows is the sum of the per-model cosines
        q = np.concatenate([np.asarray(x)[qi] for x in queries], axis=1)
        g = np.concatenate([np.asarray(x[members]) for x in gallery], axis=1)
        rows[qi, slot] = members[nearest(q, g, 1, max_memory).indices[:, 0]]
    return classes, scores, rows


def thumbnail(path):
    import cv2

    from pipeline.data.images import read_image

    img = read_image(path)
    f = THUMB / max(img.shape[:2])
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else img
