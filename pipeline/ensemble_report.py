"""Val MAP@5 of the equal-weight ensemble of every subset of the given models (like the 7th-place paper's Table 2).

Every non-empty subset of up to --max-size models (default: all of them) is scored on the validation fold exactly
as `ensemble` scores its ensemble: summed cosine similarities, per-class max over the gallery, top 5 classes,
validation images against the training images without them. Each model's embeddings are loaded once. The best
subset of each size is marked. Writes runs/ensembles/<out>/report.md, report.csv, report.json and report.png
(each subset's score by subset size, the best of each size highlighted). 2^n - 1 subsets: more than 4096 is
refused unless --max-size limits the count.

example: ./run.sh ensemble-report m1 m2 m3 m5 --data data/demo --fold 0 --max-size 3 --out table2"""
import itertools
import json
import math
import time
from pathlib import Path

from . import scoring
from .config import add_run_set_arguments, load_run_set
from .errors import UserError

MAX_SUBSETS = 4096


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (names or .yaml paths); key=value "
                   "overrides may follow")
    add_run_set_arguments(p)
    p.add_argument("--max-size", type=int, help="largest subset scored (default: all the models)")
    p.add_argument("--out", help="report name (default: the config names joined by '+')")
    scoring.add_arguments(p)


def run(args):
    cfgs = load_run_set(args.configs, args)
    if not cfgs:
        raise UserError("no configs given: ./run.sh ensemble-report m1 m2 m3 ...")
    if args.max_size is not None and args.max_size < 1:
        raise UserError(f"--max-size {args.max_size}: give 1 or more")
    ensemble_report(cfgs, args.max_size, args.out, tricks=scoring.from_args(args, len(cfgs)))


def subsets(n, max_size=None):
    """Index tuples of every non-empty subset of range(n) with at most max_size members: by size, then in order."""
    top = n if max_size is None else min(max_size, n)
    return [s for k in range(1, top + 1) for s in itertools.combinations(range(n), k)]


def count_subsets(n, max_size=None):
    top = n if max_size is None else min(max_size, n)
    return sum(math.comb(n, k) for k in range(1, top + 1))


def mark_best(rows):
    """Sets row['best_of_size']: True on the highest val MAP@5 of each subset size (the first listed on a tie)."""
    best = {}
    for i, r in enumerate(rows):
        if r["size"] not in best or r["val_map5"] > rows[best[r["size"]]]["val_map5"]:
            best[r["size"]] = i
    for i, r in enumerate(rows):
        r["best_of_size"] = best[r["size"]] == i
    return rows


def ensemble_report(cfgs, max_size=None, out_name=None, log=print, tricks=None):
    """Returns the rows [{'models': [names], 'size', 'val_map5', 'best_of_size'}] (by size, then in config order)
    and writes the report files. tricks: scoring's inference tricks for every subset (none by default)."""
    from .data.layouts import load_dataset

    tricks = tricks or dict(scoring.DEFAULTS)
    names = [c["name"] for c in cfgs]
    total = count_subsets(len(names), max_size)
    if total > MAX_SUBSETS:
        fit = max(k for k in range(1, len(names) + 1) if count_subsets(len(names), k) <= MAX_SUBSETS)
        raise UserError(f"{len(names)} models have {total} subsets (more than {MAX_SUBSETS}): limit them with "
                        f"--max-size {fit} or fewer")
    out_name = (out_name or "+".join(names)).replace("/", "_")
    inputs = scoring.load_inputs(cfgs, tricks, log=log)
    scoring.need_val(inputs, cfgs[0])
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    rows, t0 = [], time.time()
    for n, s in enumerate(subsets(len(names), max_size), start=1):
        score = scoring.val_map5(inputs, classes, tricks, cfgs[0]["max_memory"], log, models=s)
        rows.append({"models": [names[i] for i in s], "size": len(s), "val_map5": score})
        log(f"[{n}/{total}] {'+'.join(names[i] for i in s)}: val MAP@5 {score:.4f} ({time.time() - t0:.0f}s)")
    mark_best(rows)
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    info = {"models": names, "max_size": max_size or len(names), "fold": cfgs[0]["fold"],
            "data": str(cfgs[0]["data"]), "val_images": len(inputs["val"][1]),
            "gallery_images": len(scoring.val_gallery(inputs)[1]), "tricks": tricks}
    write_report(rows, out_dir, info, log)
    return rows


def markdown(rows):
    lines = ["| size | models | val MAP@5 | best of size |", "|---|---|---|---|"]
    for r in rows:
        score = f"{r['val_map5']:.4f}"
        lines.append(f"| {r['size']} | {' + '.join(r['models'])} | "
                     f"{f'**{score}**' if r['best_of_size'] else score} | {'✓' if r['best_of_size'] else ''} |")
    return "\n".join(lines) + "\n"


def write_report(rows, out_dir, info, log=print):
    from .io import write_csv, write_text
    from .plots import subset_scores

    table = markdown(rows)
    write_text(out_dir / "report.md", table)
    write_csv(out_dir / "report.csv", ["size", "models", "val_map5", "best_of_size"],
              [[r["size"], "+".join(r["models"]), r["val_map5"], int(r["best_of_size"])] for r in rows])
    write_text(out_dir / "report.json", json.dumps({**info, "rows": rows}, indent=1, ensure_ascii=False))
    subset_scores(rows, out_dir / "report.png")
    log(table + f"wrote {out_dir / 'report.md'}, report.csv, report.json, report.png")
