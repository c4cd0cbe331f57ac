"""A picture of a run's (or an equal-weight ensemble's) retrievals: one row per validation query, then its top-5
predicted classes, each shown by that class's best-matching gallery image (training images without the
validation rows, as `ensemble` ranks), framed green for the query's true class and red otherwise."""
from pathlib import Path

import numpy as np

from pipeline.reports.pictures import best_matches, pick_queries, thumbnail


def show(cfgs, n=16, seed=None, out=None, log=print):
    """Writes the grid; returns {'path', 'queries': [val image ids], 'classes', 'scores', 'gallery': [[ids]]}."""
    from pipeline.data.folds import gallery_items, split
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.reports.plots import retrieval_grid
    from pipeline.retrieval.rank import encode
    from pipeline.retrieval.runsets import load_embeddings, need_val

    inputs = load_embeddings(cfgs, DEFAULTS, log=log)
    need_val(inputs.val.ids, cfgs[0])
    val, gallery = inputs.val, inputs.val_gallery  # as ensemble scores
    val_ids, val_labels = val.ids, val.labels
    ds = split(cfgs[0])[0]
    classes = ds.classes
    picked = pick_queries(len(val_ids), n, seed)
    cls, sc, rows = best_matches([np.asarray(v)[picked] for v in val.arrays], gallery.arrays,
                                 encode(gallery.labels, classes))
    paths = {it.image_id: it.path for it in gallery_items(ds)}  # outside gallery rows too (extra_images)
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
