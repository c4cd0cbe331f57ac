"""Retrieval metrics of trained runs (and of a pretrained backbone, zero-shot) on the validation fold.

Queries are the validation images, the gallery the training images without them (as `ensemble` scores), or with
--leave-one-out the validation images against each other, each skipping itself. --queries test scores labelled
test images (the query/gallery layout's query/ folder) against the whole gallery instead. Metrics (--metrics):
  map@5        Kaggle class-level MAP@5 (top 5 classes by per-class max cosine; = ensemble's per-model score)
  map@k        seed 001's instance mAP@k = mean of 1/min(k, M_q) * sum_{i<=k} P@i * rel(i), one column per k,
               named mAP@1, mAP@5 ... (capital A: not the class-level map@5)
  acc@1        top gallery image has the query's label
  precision@k  relevant images in the top k / k
  recall@k     1 if any relevant image is in the top k (seed 002's Recall@K)
M_q = gallery images with the query's label; a query with M_q = 0 scores 0 and counts. --zero-shot BACKBONE adds
the row 'zero-shot BACKBONE': timm's pretrained backbone, pooled as the config says, no neck, no training (its
features are cached in runs/zero-shot/<backbone>/<size>/). Writes the table to runs/evaluate/<out>/metrics.md,
.csv and .json. The inference-trick flags apply to trained runs: embedding-time ones (--flip, --multicrop,
--gallery-pipeline) to every metric, ranking-time ones (QE, DBA, PCA, --agg) to map@5. --ablate scores the runs'
ensemble once per trick, each alone, and writes ablate.md/.csv/.json/.png beside.

example: ./run.sh evaluate m1 m2 --data data/demo --fold 0 --metrics map@5,map@k,acc@1 --k 1,5,10
         ./run.sh evaluate demo_lite0 demo_lite0_gem demo_lite0_small --data data/demo --ablate"""
import json
from collections import Counter
from pathlib import Path

import numpy as np

from . import scoring
from .errors import UserError

METRICS = ("map@5", "map@k", "acc@1", "precision@k", "recall@k")
_INSTANCE = {"map@k": "mAP@k", "acc@1": "acc@1", "precision@k": "precision@k", "recall@k": "recall@k"}


def add_arguments(p):
    p.add_argument("runs", nargs="*", metavar="RUN", help="trained configs (names or .yaml paths); key=value "
                   "overrides may follow")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated, of {', '.join(METRICS)} "
                   "(default all)")
    p.add_argument("--k", default="1,5,10", help="k values of the @k metrics (default 1,5,10)")
    p.add_argument("--leave-one-out", action="store_true", help="queries = gallery = validation images, "
                   "each skipping itself")
    p.add_argument("--queries", choices=["val", "test"], default="val", help="val: the validation fold (default); "
                   "test: the labelled test images (query/gallery layout) against all training images")
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    p.add_argument("--fold", type=int, help="validation fold (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default best)")
    p.add_argument("--max-memory", type=int, help="bytes of extra memory for the search (default 2 GiB)")
    p.add_argument("--out", help="name of the report (default: the run names joined by '+')")
    p.add_argument("--zero-shot", metavar="BACKBONE", help="also score this timm backbone's pretrained features")
    p.add_argument("--ablate", action="store_true", help="val MAP@5 of the runs' ensemble with each inference trick "
                   "alone vs none")
    scoring.add_arguments(p)
    p.set_defaults(overrides=[])  # cli.main appends key=value given after an option here


def run(args):
    from .config import load_config

    # argparse puts key=value given before any option into `runs`: they are overrides
    overrides = [r for r in args.runs if "=" in r] + list(args.overrides)
    names = [r for r in args.runs if "=" not in r]
    if not names and not args.zero_shot:
        raise UserError("nothing to evaluate: give trained runs (config names or .yaml paths) or --zero-shot BACKBONE")
    metrics, ks = parse_metrics(args.metrics), parse_ks(args.k)
    flags = dict(data=args.data, fold=args.fold, checkpoint=args.checkpoint, max_memory=args.max_memory)
    cfgs = [load_config(n, overrides, **flags) for n in names]
    base = cfgs[0] if cfgs else load_config("default", overrides, **flags)
    tricks = scoring.from_args(args, len(cfgs))
    out = args.out or "+".join([c["name"] for c in cfgs] + ([f"zero-shot-{args.zero_shot}"] if args.zero_shot else []))
    out_dir = Path(base["runs_dir"]) / "evaluate" / out.replace("/", "_")
    if args.ablate:
        if not cfgs or args.leave_one_out or args.queries != "val":
            raise UserError("--ablate scores trained runs on the validation fold: give runs, without "
                            "--leave-one-out / --queries test")
        scoring.ablate(cfgs, tricks, out_dir)
        return
    if args.leave_one_out and any(tricks[k] != scoring.DEFAULTS[k] for k in scoring.RANKING_TRICKS):
        raise UserError("--leave-one-out scores without the ranking tricks (--qe, --dba, --pca, --agg, --weights)")
    if cfgs:
        rows = evaluate_runs(cfgs, metrics, ks, args.leave_one_out, args.zero_shot, queries=args.queries,
                             tricks=tricks)
    else:
        rows = [zero_shot_row(base, args.zero_shot, metrics, ks, args.leave_one_out, queries=args.queries)]
    write_report(rows, out_dir, {"metrics": metrics, "ks": ks, "leave_one_out": args.leave_one_out,
                                 "queries": args.queries, "fold": base["fold"], "data": str(base["data"]),
                                 "tricks": tricks})


def parse_metrics(text):
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics '{text}': unknown metric '{bad[0] if bad else ''}' (choose from "
                        f"{','.join(METRICS)})")
    return list(dict.fromkeys(names))


def parse_ks(text):
    try:
        ks = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--k '{text}': give comma-separated positive integers, e.g. --k 1,5,10")
    return list(dict.fromkeys(ks))


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


def score(queries, query_labels, gallery, gallery_labels, classes, metrics, ks, leave_one_out=False,
          max_memory=2 << 30, log=print, tricks=None):
    """{column: value} of the metrics for one set of embeddings (columns in the order of `metrics`); tricks: the
    ranking-time inference tricks for map@5 (scoring.DEFAULTS if None)."""
    from .metrics import class_map5_leave_one_out, instance_metrics, map_at_k

    row, rel = {}, None
    for m in metrics:
        if m == "map@5":
            row[m] = (class_map5_leave_one_out(queries, query_labels, max_memory) if leave_one_out else
                      map_at_k(scoring.predict([queries], [gallery], list(gallery_labels), classes,
                                               tricks or scoring.DEFAULTS, max_memory, log), list(query_labels)))
            continue
        if rel is None:
            idx, _ = topk_cosine(queries, gallery, max(ks), max_memory, leave_one_out=leave_one_out)
            rel = np.asarray(gallery_labels, object)[idx] == np.asarray(query_labels, object)[:, None]
            counts = Counter(gallery_labels)
            n_rel = [counts[x] - int(leave_one_out) for x in query_labels]
        row.update(instance_metrics(rel, n_rel, ks, [_INSTANCE[m]]))
    return row


def evaluate_runs(cfgs, metrics, ks, leave_one_out=False, zero_shot=None, log=print, queries="val", tricks=None):
    """One row {'model': name, column: value ...} per trained run, from its (cached) embeddings; with zero_shot
    (a timm backbone name), first the zero-shot row of that backbone on cfgs[0]'s data and fold (no tricks)."""
    from .data.layouts import load_dataset
    from .embed import ensure_embeddings, load_split

    tricks = dict(tricks or scoring.DEFAULTS, weights=None)
    rows = [zero_shot_row(cfgs[0], zero_shot, metrics, ks, leave_one_out, log, queries)] if zero_shot else []
    for cfg in cfgs:
        e = ensure_embeddings(cfg, log=log, **{k: tricks[k] for k in scoring.EMBEDDING_TRICKS})
        g, g_ids, g_labels = load_split(e["dir"], e["stems"]["gallery"])
        v, v_ids, v_labels = load_split(e["dir"], e["stems"][queries])
        _need_queries(cfg, queries, v_ids, v_labels)
        g, g_labels = _gallery(g, g_ids, g_labels, v, v_ids, v_labels, leave_one_out, queries)
        rows.append({"model": cfg["name"], **score(np.asarray(v), v_labels, g, g_labels,
                                                   load_dataset(cfg["data"], cfg).classes, metrics, ks,
                                                   leave_one_out, cfg["max_memory"], log, tricks)})
        log(f"evaluated {cfg['name']} fold {cfg['fold']}: {len(v_ids)} queries, {len(g_labels)} gallery images")
    return rows


def _gallery(g, g_ids, g_labels, q, q_ids, q_labels, leave_one_out, queries):
    """The searched gallery: the queries themselves (leave-one-out), every training image for test queries (they
    are not training images), else the training images without the validation rows, so a query never finds
    itself (as ensemble scores)."""
    if leave_one_out:
        return np.asarray(q), list(q_labels)
    if queries == "test":
        return np.asarray(g), list(g_labels)
    val_set = set(q_ids)
    keep = np.array([i not in val_set for i in g_ids], bool)
    return np.asarray(g)[keep], [x for x, k in zip(g_labels, keep) if k]


def _need_queries(cfg, queries, ids, labels):
    if queries == "val" and not ids:
        raise UserError(f"fold {cfg['fold']} has no validation images in {cfg['data']}: pick another --fold "
                        f"(see {cfg['folds_file']})")
    if queries == "test" and (not ids or not all(labels)):
        raise UserError(f"--queries test: the test images of {cfg['data']} are missing or unlabelled; it needs "
                        "labelled queries (layout query_gallery: query/<class>/<image>)")


def zero_shot_row(cfg, backbone, metrics, ks, leave_one_out=False, log=print, queries="val"):
    """Row 'zero-shot BACKBONE': the pretrained backbone's pooled features (the config's pooling, no neck, no
    training), queries with the val transform (test transform for test queries), gallery with the test transform,
    L2-normalised, scored like a trained run. Features are cached in runs/zero-shot/<backbone>/<size>/."""
    import torch

    from .data.transforms import build_transform
    from .inference import pick_device
    from .model import GeM, create_backbone, input_config
    from .train import split

    zcfg = dict(cfg, backbone=backbone,  # a weights file belongs to the config's own backbone
                pretrained_file=cfg["pretrained_file"] if backbone == cfg["backbone"] else "")
    ds, train_items, val_items, classes = split(zcfg)
    q_items = ds.test if queries == "test" else val_items
    _need_queries(zcfg, queries, [it.image_id for it in q_items], [it.label for it in q_items])
    # seeded so that random weights (pretrained=false) are the same on every call, hence cacheable
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zcfg["seed"])
        model, source = create_backbone(zcfg, with_weights=True)
    if source is None:
        log(f"zero-shot {backbone}: no pretrained weights (pretrained=false), random initialisation")
    size, mean, std = input_config(zcfg, model)
    if zcfg["pooling"] == "gem":  # create_backbone leaves gem's maps unpooled: the Embedder pools them
        model = torch.nn.Sequential(model, GeM(zcfg["gem_p"]))
    ident = f"zero-shot|{backbone}|{source}|{zcfg['pooling']}|{zcfg['gem_p']}|{zcfg['seed']}|{mean}|{std}"
    if source and source.startswith("file:"):
        st = Path(source[len("file:"):]).stat()
        ident += f"|{st.st_size}|{st.st_mtime_ns}"
    device = pick_device()
    model.to(device, memory_format=torch.channels_last if zcfg["channels_last"] else torch.contiguous_format)
    cache = Path(zcfg["runs_dir"]) / "zero-shot" / backbone.replace("/", "_") / str(size)
    embed = lambda name, items, kind: _embed_cached(model, items, build_transform(kind, zcfg, size, mean, std),
                                                    zcfg, device, ident, size, cache / f"{name}.npy", log)
    q_name = "query" if queries == "test" else f"val_fold{zcfg['fold']}"
    q, q_labels = embed(q_name, q_items, queries), [it.label for it in q_items]
    g, g_ids, g_labels = (None, [], []) if leave_one_out else (
        embed("gallery", ds.train, "test"), [it.image_id for it in ds.train], [it.label for it in ds.train])
    g, g_labels = _gallery(g, g_ids, g_labels, q, [it.image_id for it in q_items], q_labels, leave_one_out, queries)
    row = {"model": f"zero-shot {backbone}",
           **score(q, q_labels, g, g_labels, classes, metrics, ks, leave_one_out, zcfg["max_memory"], log)}
    log(f"evaluated zero-shot {backbone} fold {zcfg['fold']}: {len(q)} queries, {len(g_labels)} gallery images")
    return row


def _embed_cached(model, items, tfm, cfg, device, ident, size, path, log):
    """embed.py's cache for the zero-shot features: recomputed only when the key (weights, image list, transform,
    size) in the .json beside the .npy changes."""
    from .data.transforms import describe
    from .embed import _key, _save_npy
    from .inference import embed_items
    from .io import write_text

    key, meta = _key(ident, items, describe(tfm), size), path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return np.load(path)
    emb, _ = embed_items(model, items, tfm, cfg, device)
    _save_npy(path, emb)
    write_text(meta, json.dumps({"key": key, "rows": len(emb), "transform": describe(tfm)}, indent=1))
    log(f"embedded zero-shot {path.stem}: {len(emb)} images ({path})")
    return emb


def write_report(rows, out_dir, info, log=print):
    from .io import write_csv, write_text

    cols = list(dict.fromkeys(k for r in rows for k in r if k != "model"))
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([r["model"]] + [f"{r[c]:.4f}" if c in r else "" for c in cols]) + " |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    write_text(out_dir / "metrics.md", table)
    write_csv(out_dir / "metrics.csv", ["model"] + cols, [[r["model"]] + [r.get(c, "") for c in cols] for r in rows])
    write_text(out_dir / "metrics.json", json.dumps({**info, "rows": rows}, indent=1))
    log(table + f"wrote {out_dir / 'metrics.md'}, metrics.csv, metrics.json")
