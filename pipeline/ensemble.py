"""Equal-weight ensemble of trained runs: sum of the models' cosine similarities (= dot product of the concatenated
per-model normalised embeddings), per-class max over the gallery, top 5 unique classes. Reports each model's and
the ensemble's validation MAP@5 (validation images against the gallery without them) and writes the test
submission to submissions/<out>.csv (plus runs/ensembles/<out>/scores.json and scores.md).

example: ./run.sh ensemble m1 m2 m3 --data data/demo --fold 0 --out m123"""
import json
from pathlib import Path

import numpy as np

from .errors import UserError


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (m1 m2 ...)")
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    p.add_argument("--fold", type=int, help="fold of the runs (default 0)")
    p.add_argument("--out", help="submission name (default: the config names joined by '+')")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default best)")
    p.add_argument("--max-memory", type=int, help="bytes of extra memory for ranking (default 2 GiB)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help="config overrides for every model")


def run(args):
    from .config import load_config

    cfgs = [load_config(c, args.overrides, data=args.data, fold=args.fold, checkpoint=args.checkpoint,
                        max_memory=args.max_memory) for c in args.configs]
    ensemble(cfgs, args.out)


def _aligned(splits, what):
    ids = splits[0][1]
    for s in splits[1:]:
        if s[1] != ids:
            raise UserError(f"the models' {what} embeddings list different images: re-embed them on the same data")
    return ids


def ensemble(cfgs, out_name=None, log=print):
    """Returns {'models': {name: val_map5}, 'ensemble': {'val_map5', 'test_map5'?}, 'submission': path}."""
    from .data.layouts import load_dataset
    from .embed import ensure_embeddings, load_split
    from .io import write_text
    from .retrieval import map5, top5
    from .submission import read_truth, write_submission

    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    out_name = out_name or "+".join(names)
    dirs = [ensure_embeddings(c, log=log)["dir"] for c in cfgs]
    gal = [load_split(d, "gallery") for d in dirs]
    val = [load_split(d, "val") for d in dirs]
    test = [load_split(d, "test") for d in dirs]
    gallery_ids, gallery_labels = _aligned(gal, "gallery"), gal[0][2]
    val_ids, val_labels = _aligned(val, "val"), val[0][2]
    _aligned(test, "test")
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    classes, mem = ds.classes, cfgs[0]["max_memory"]
    quiet = dict(max_memory=mem, log=log)

    # Validation: the gallery without the validation images, so a query never finds itself.
    val_set = set(val_ids)
    keep = np.array([i not in val_set for i in gallery_ids])
    g_val = [np.asarray(g[0])[keep] for g in gal]
    g_val_labels = [lab for lab, k in zip(gallery_labels, keep) if k]
    report = {"models": {}, "ensemble": {}, "fold": cfgs[0]["fold"]}
    if val_ids:
        for n, v, g in zip(names, val, g_val):
            report["models"][n] = map5([v[0]], val_labels, [g], g_val_labels, classes, **quiet)
        report["ensemble"]["val_map5"] = map5([v[0] for v in val], val_labels, g_val, g_val_labels, classes, **quiet)

    sub_path = None
    if ds.test_ids:
        preds = top5([t[0] for t in test], [g[0] for g in gal], gallery_labels, classes, **quiet)
        sub_path = Path("submissions") / f"{out_name}.csv"
        write_submission(sub_path, test[0][1], preds, expected_ids=ds.test_ids, known_classes=classes,
                         id_column=ds.id_column, label_column=ds.label_column)
        truth_path = Path(cfgs[0]["data"]) / "test_truth.csv"
        if truth_path.is_file():  # the embedded dataset ships its answers
            from .metrics import map_at_k

            truth = read_truth(truth_path)
            report["ensemble"]["test_map5"] = map_at_k(preds, [truth[i] for i in test[0][1]], k=5)
    report["submission"] = str(sub_path) if sub_path else None
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    write_text(out_dir / "scores.json", json.dumps(report, indent=1))
    lines = ["| model | val MAP@5 |", "|---|---|"] + [f"| {n} | {s:.4f} |" for n, s in report["models"].items()]
    if "val_map5" in report["ensemble"]:
        lines.append(f"| **ensemble ({len(names)})** | **{report['ensemble']['val_map5']:.4f}** |")
    write_text(out_dir / "scores.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    if "test_map5" in report["ensemble"]:
        log(f"test MAP@5 against {truth_path}: {report['ensemble']['test_map5']:.4f}")
    if sub_path:
        log(f"wrote {sub_path} ({len(preds)} rows)")
    return report
