"""From the models' cached embeddings to class predictions, with the inference tricks of the strongest peers.

The tricks are options of `ensemble` and `evaluate` (flags below), each off by default until it wins on the
validation fold (`./run.sh evaluate ... --ablate` measures each one alone). Embedding-time tricks (flip TTA,
multi-crop queries, the gallery's pipeline) pick which cached embeddings are loaded (pipeline/embed.py);
ranking-time tricks (weights, PCA, DBA, QE, per-class aggregation) go to pipeline/tricks.py's predict."""
import json
import time

import numpy as np

from .errors import UserError

DEFAULTS = {"flip": False, "multicrop": 0, "gallery_pipeline": "test", "agg": "max", "agg_k": 3,
            "qe": (0, 3.0), "dba": (0, 3.0), "pca": 0, "whiten": False, "weights": None}
EMBEDDING_TRICKS = ("flip", "multicrop", "gallery_pipeline")  # choose which cached embeddings are loaded
RANKING_TRICKS = ("agg", "agg_k", "qe", "dba", "pca", "whiten", "weights")

# evaluate --ablate: one row per trick, each alone on top of the defaults (peers' settings where they gave any)
ABLATIONS = [
    ("flip TTA", {"flip": True}),
    ("multi-crop 5 (red crops dropped)", {"multicrop": 5}),
    ("multi-crop 9 (red crops dropped)", {"multicrop": 9}),
    ("gallery with the val pipeline", {"gallery_pipeline": "val"}),
    ("class score = sum of top-3", {"agg": "sum", "agg_k": 3}),
    ("query expansion k=5 α=3", {"qe": (5, 3.0)}),
    ("database augmentation k=5 α=3", {"dba": (5, 3.0)}),
    ("PCA {dim}", {"pca": -1}),  # -1: the dimension is picked from the data (see _pca_dim)
    ("PCA {dim} + whitening", {"pca": -1, "whiten": True}),
]


def add_arguments(p):
    g = p.add_argument_group("inference tricks (off by default; see evaluate --ablate)")
    g.add_argument("--flip", action="store_true", help="flip TTA: queries and gallery embed x and its mirror")
    g.add_argument("--multicrop", type=int, default=0, choices=[0, 5, 9],
                   help="queries as the mean of 5 or 9 crops, crops > 50%% red dropped (SPEC 2, Appendix D)")
    g.add_argument("--gallery-pipeline", default="test", choices=["test", "val"],
                   help="transforms the gallery is embedded with (SPEC Table 3; default test)")
    g.add_argument("--agg", default="max", choices=["max", "sum"], help="class score: max, or sum of the top --agg-k")
    g.add_argument("--agg-k", type=int, default=3, help="similarities summed per class with --agg sum (default 3)")
    g.add_argument("--qe", metavar="K[,ALPHA]", help="label-constrained query expansion, e.g. 5,3")
    g.add_argument("--dba", metavar="K[,ALPHA]", help="label-constrained database-side augmentation, e.g. 5,3")
    g.add_argument("--pca", type=int, default=0, metavar="DIM", help="PCA of the concatenated embedding, fitted on "
                   "the gallery (0 = off)")
    g.add_argument("--whiten", action="store_true", help="whiten with --pca")
    g.add_argument("--weights", metavar="W1,W2,...", help="per-model weights (default equal)")


def _k_alpha(flag, text):
    if not text:
        return (0, 3.0)
    parts = text.split(",")
    try:
        k, alpha = int(parts[0]), float(parts[1]) if len(parts) > 1 else 3.0
    except ValueError:
        k = alpha = -1
    if len(parts) > 2 or k < 0 or alpha < 0:
        raise UserError(f"{flag} '{text}': give K[,ALPHA] with K >= 0 and ALPHA >= 0, e.g. {flag} 5,3")
    return (k, alpha)


def from_args(args, n_models):
    """The tricks dict of the parsed flags, checked."""
    weights = None
    if args.weights:
        try:
            weights = [float(x) for x in args.weights.split(",")]
        except ValueError:
            weights = []
        if len(weights) != n_models or min(weights) < 0 or sum(weights) <= 0:
            raise UserError(f"--weights '{args.weights}': give {n_models} non-negative numbers (one per model, "
                            "not all zero), e.g. --weights " + ",".join(["1"] * n_models))
    if args.agg_k < 1:
        raise UserError(f"--agg-k {args.agg_k}: must be >= 1")
    if args.pca < 0:
        raise UserError(f"--pca {args.pca}: give a dimension > 0, or 0 for off")
    if args.whiten and not args.pca:
        raise UserError("--whiten needs --pca DIM")
    return {"flip": args.flip, "multicrop": args.multicrop, "gallery_pipeline": args.gallery_pipeline,
            "agg": args.agg, "agg_k": args.agg_k, "qe": _k_alpha("--qe", args.qe), "dba": _k_alpha("--dba", args.dba),
            "pca": args.pca, "whiten": args.whiten, "weights": weights}


def describe(tricks):
    """Short text of the tricks that differ from the defaults ('none' if none)."""
    on = [f"{k}={v}" for k, v in tricks.items() if v != DEFAULTS[k]]
    return ", ".join(on) or "none"


def load_inputs(cfgs, tricks, log=print):
    """Per-model gallery / val / test embeddings of the variant the tricks ask for, checked to list the same
    images, plus the validation gallery mask (training images without the validation rows)."""
    from .embed import ensure_embeddings, load_split

    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    variant = {k: tricks[k] for k in EMBEDDING_TRICKS}
    ens = [ensure_embeddings(c, log=log, **variant) for c in cfgs]
    out = {"names": names}
    for split in ("gallery", "val", "test"):
        loaded = [load_split(e["dir"], e["stems"][split]) for e in ens]
        ids = loaded[0][1]
        if any(x[1] != ids for x in loaded[1:]):
            raise UserError(f"the models' {split} embeddings list different images: re-embed them on the same data")
        out[split] = ([x[0] for x in loaded], ids, loaded[0][2])
    val_set = set(out["val"][1])
    out["val_keep"] = np.array([i not in val_set for i in out["gallery"][1]], bool)
    return out


def predict(queries, gallery, gallery_labels, classes, tricks, max_memory, log=print, models=None):
    """Top-5 class names per query with the ranking-time tricks; models: indices of the models to use."""
    from .retrieval import encode
    from .tricks import predict as predict_codes

    models = range(len(queries)) if models is None else models
    w = tricks["weights"]
    codes, _ = predict_codes([queries[m] for m in models], [gallery[m] for m in models],
                             encode(gallery_labels, classes), k=5,
                             weights=None if w is None else [w[m] for m in models], pca_dim=tricks["pca"],
                             whiten=tricks["whiten"], dba=tricks["dba"], qe=tricks["qe"], agg=tricks["agg"],
                             agg_k=tricks["agg_k"], max_memory=max_memory, log=log)
    return [[classes[c] for c in row if c >= 0] for row in codes]


def val_gallery(inputs):
    """(per-model arrays, labels) of the validation gallery: the training images without the validation rows, so
    a query never finds itself. Built on first use and kept in `inputs` (a copy of the gallery rows)."""
    if "val_gallery" not in inputs:
        keep = inputs["val_keep"]
        inputs["val_gallery"] = ([np.asarray(g)[keep] for g in inputs["gallery"][0]],
                                 [lab for lab, k in zip(inputs["gallery"][2], keep) if k])
    return inputs["val_gallery"]


def need_val(inputs, cfg):
    if not inputs["val"][1]:
        raise UserError(f"fold {cfg['fold']} has no validation images in {cfg['data']}: pick another --fold "
                        f"(see {cfg['folds_file']})")


def val_map5(inputs, classes, tricks, max_memory, log=print, models=None):
    """Validation MAP@5 (queries: the validation images; gallery: val_gallery) of the models (indices; all)."""
    from .metrics import map_at_k

    gal, labels = val_gallery(inputs)
    preds = predict([np.asarray(v) for v in inputs["val"][0]], gal, labels, classes, tricks, max_memory, log, models)
    return map_at_k(preds, list(inputs["val"][2]), k=5)


def _pca_dim(inputs):
    """Half the concatenated dimension, at most 128 and below the validation gallery's row count."""
    dim = sum(g.shape[1] for g in inputs["gallery"][0])
    return max(1, min(128, dim // 2, int(inputs["val_keep"].sum()) - 1))


def ablate(cfgs, tricks, out_dir, log=print):
    """Val MAP@5 of the runs' ensemble with `tricks` (the baseline row), then with each trick of ABLATIONS alone
    on top; writes ablate.md/.csv/.json/.png to out_dir and returns the rows."""
    from .data.layouts import load_dataset
    from .io import write_csv, write_text
    from .plots import ablation_bars

    classes, mem = load_dataset(cfgs[0]["data"], cfgs[0]).classes, cfgs[0]["max_memory"]
    loaded, rows = {}, []
    for i, (name, change) in enumerate([("baseline", {})] + ABLATIONS):
        t = dict(tricks, **change)
        key = tuple(t[k] for k in EMBEDDING_TRICKS)
        if key not in loaded:
            loaded[key] = load_inputs(cfgs, t, log=log)
        if t["pca"] == -1:
            t["pca"] = _pca_dim(loaded[key])
            name = name.format(dim=t["pca"])
        t0 = time.time()
        score = val_map5(loaded[key], classes, t, mem, log=lambda *a: None)
        rows.append({"trick": name, "val_map5": score, "delta": score - rows[0]["val_map5"] if rows else 0.0,
                     "seconds": time.time() - t0, "tricks": describe(t)})
        log(f"[{i + 1}/{len(ABLATIONS) + 1}] {name}: val MAP@5 {score:.4f}")
    lines = [f"Ablation over {' + '.join(c['name'] for c in cfgs)} (fold {cfgs[0]['fold']}; baseline tricks: "
             f"{describe(tricks)})", "", "| trick | val MAP@5 | Δ vs baseline | ranking s |", "|---|---|---|---|"]
    lines += [f"| {r['trick']} | {r['val_map5']:.4f} | {r['delta']:+.4f} | {r['seconds']:.2f} |" for r in rows]
    table = "\n".join(lines) + "\n"
    write_text(out_dir / "ablate.md", table)
    write_csv(out_dir / "ablate.csv", ["trick", "val_map5", "delta", "seconds", "tricks"],
              [[r[k] for k in ("trick", "val_map5", "delta", "seconds", "tricks")] for r in rows])
    write_text(out_dir / "ablate.json", json.dumps({"models": [c["name"] for c in cfgs], "fold": cfgs[0]["fold"],
                                                    "baseline": tricks, "rows": rows}, indent=1))
    ablation_bars(rows, out_dir / "ablate.png")
    log(table + f"wrote {out_dir / 'ablate.md'}, ablate.csv, ablate.json, ablate.png")
    return rows
