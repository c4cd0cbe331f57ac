"""A picture of a run's (or an equal-weight ensemble's) retrievals: one row per validation query, then its top-5
predicted classes, each shown by that class's best-matching gallery image (training images without the
validation rows, as `ensemble` ranks), framed green for the query's true class and red otherwise."""
from pathlib import Path

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
    from pipeline.retrieval.rank import rank
    from pipeline.retrieval.search import nearest

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


def show(cfgs, n=16, seed=None, out=None, log=print):
    """Writes the grid; returns {'path', 'queries': [val image ids], 'classes', 'scores', 'gallery': [[ids]]}."""
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.registry import DEFAULTS
    from pipeline.reports.plots import retrieval_grid
    from pipeline.retrieval.predict import encode, load_embeddings, need_val

    inputs = load_embeddings(cfgs, DEFAULTS, log=log)
    need_val(inputs.val.ids, cfgs[0])
    val, gallery = inputs.val, inputs.val_gallery  # as ensemble scores
    val_ids, val_labels = val.ids, val.labels
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    classes = ds.classes
    picked = pick_queries(len(val_ids), n, seed)
    cls, sc, rows = best_matches([np.asarray(v)[picked] for v in val.arrays], gallery.arrays,
                                 encode(gallery.labels, classes))
    paths = {it.image_id: it.path for it in ds.train}
    grid, result = [], {"queries": [], "classes": [], "scores": [], "gallery": []}
    for i, q in enumerate(picked):
        hits = [gallery.ids[r] for r in rows[i]]
        names_i = [classes[c] for c in cls[i]]
        grid.append({"image": thumbnail(paths[val_ids[q]]), "label": val_labels[q],
                     "matches": [(thumbnail(paths[h]), c, float(s), c == val_labels[q])
                                 for h, c, s in zip(hits, names_i, sc[i])]})
        result["queries"].append(val_ids[q])
        result["classes"].append(names_i)
        result["scores"].append([float(s) for s in sc[i]])
        result["gallery"].append(hits)
    default = Path(cfgs[0]["runs_dir"]) / "ensembles" / "+".join(inputs.names).replace("/", "_") / "show.png"
    path = Path(out) if out else default
    retrieval_grid(grid, path)
    hit1 = np.mean([r[0] == val_labels[q] for r, q in zip(result["classes"], picked)]) if len(picked) else 0.0
    log(f"wrote {path}: {len(picked)} validation queries of {len(val_ids)} (top-1 correct for {hit1:.0%})")
    return {"path": path, **result}
