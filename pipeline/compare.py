"""Compare recipes: train and evaluate every config on the same fold with the same seeds, then tabulate the
mean and standard deviation over seeds of each metric, the training time and throughput, next to the zero-shot
row (the pretrained backbone's pooled features, no training). Writes runs/compare/<out>/compare.md, .csv,
.json and compare.png (bar chart of val MAP@5). Runs live in runs/compare/<out>/seed<s>/<config>/fold<k>/; a
finished run is reused and an interrupted one resumed, so rerunning an interrupted comparison loses nothing.

example: ./run.sh compare demo_lite0 demo_supcon demo_triplet --data data/demo --seeds 3 epochs=2"""
import csv
import json
import statistics
import time
from pathlib import Path

import yaml

from .errors import UserError


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="configs to compare (names or .yaml paths)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config: 1..N (default 3)")
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    p.add_argument("--fold", type=int, help="validation fold (default 0)")
    p.add_argument("--out", help="name of the comparison (default: the config names joined by '+')")
    p.add_argument("--metrics", default="map@5,map@k,acc@1,precision@k,recall@k", help="metrics to report")
    p.add_argument("--k", default="1,5,10", help="k values of the @k metrics")
    p.add_argument("--zero-shot", metavar="BACKBONE", help="backbone of the zero-shot row (default: the first "
                   "config's); 'none' to skip it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every config, e.g. epochs=2")


def run(args):
    from .config import load_config
    from .evaluate import parse_ks, parse_metrics

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give 1 or more")
    metrics, ks = parse_metrics(args.metrics), parse_ks(args.k)
    cfgs = [load_config(c, args.overrides, data=args.data, fold=args.fold) for c in args.configs]
    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    compare(cfgs, args.seeds, metrics, ks, args.out or "+".join(names), args.zero_shot)


def _finished(run, cfg):
    """'done', 'partial' (same config, resumable) or None (nothing usable) for a run folder."""
    saved, metrics = run / "config.yaml", run / "metrics.csv"
    if not saved.is_file() or yaml.safe_load(saved.read_text()) != cfg:
        return None
    rows = list(csv.DictReader(open(metrics))) if metrics.is_file() else []
    if len(rows) >= cfg["epochs"] and (run / "best.pt").is_file():
        return "done"
    return "partial" if (run / "last.pt").is_file() else None


def _train_stats(run):
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return {"train_seconds": sum(float(r["seconds"]) for r in rows),
            "images_per_sec": statistics.mean(float(r["images_per_sec"]) for r in rows)}


def compare(cfgs, seeds, metrics, ks, out, zero_shot=None, log=print):
    """Returns the summary rows (one per config, plus the zero-shot row first)."""
    from .config import run_dir
    from .evaluate import evaluate_runs, zero_shot_row
    from .train import train

    root = Path(cfgs[0]["runs_dir"]) / "compare" / out
    per_run = []
    total, t0 = len(cfgs) * seeds, time.time()
    for i, cfg in enumerate(cfgs):
        for seed in range(1, seeds + 1):
            c = dict(cfg, seed=seed, runs_dir=str(root / f"seed{seed}"))
            run = run_dir(c)
            state = _finished(run, c)
            n = i * seeds + seed
            log(f"[{n}/{total}] {c['name']} seed {seed}: " + {"done": "trained already", "partial": "resuming",
                                                              None: "training"}[state])
            if state != "done":
                train(c, resume=state == "partial", log=lambda *a: None)
            row = evaluate_runs([c], metrics, ks, log=lambda *a: None)[0]
            row.update(_train_stats(run), model=c["name"], seed=seed)
            per_run.append(row)
            log(f"    val MAP@5 {row.get('map@5', float('nan')):.4f}, {row['train_seconds']:.0f}s "
                f"({time.time() - t0:.0f}s elapsed)")
    columns = [k for k in per_run[0] if k not in ("model", "seed", "train_seconds", "images_per_sec")]
    summary = []
    if (zero_shot or "").lower() != "none":
        backbone = zero_shot or cfgs[0]["backbone"]
        zs = zero_shot_row(cfgs[0], backbone, metrics, ks, log=lambda *a: None)
        summary.append({"model": zs["model"], "seeds": 0,
                        **{k: (zs[k], 0.0) for k in columns if k in zs}})
    for cfg in cfgs:
        rows = [r for r in per_run if r["model"] == cfg["name"]]
        entry = {"model": cfg["name"], "seeds": len(rows)}
        for k in columns + ["train_seconds", "images_per_sec"]:
            vals = [r[k] for r in rows]
            entry[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        summary.append(entry)
    _write(root, summary, per_run, columns, log)
    return summary


def _write(root, summary, per_run, columns, log):
    from .io import write_csv, write_text
    from .plots import compare_bars

    stats = columns + ["train_seconds", "images_per_sec"]
    head = ["model", "seeds"] + stats
    fmt = lambda k, v: f"{v[0]:.0f} ± {v[1]:.0f}" if k == "train_seconds" else (
        f"{v[0]:.1f} ± {v[1]:.1f}" if k == "images_per_sec" else f"{v[0]:.4f} ± {v[1]:.4f}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["model"], str(e["seeds"])] + [fmt(k, e[k]) if k in e else "" for k in stats]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    write_text(root / "compare.md", table)
    csv_head = ["model", "seeds"] + [f"{k}_{s}" for k in stats for s in ("mean", "std")]
    write_csv(root / "compare.csv", csv_head,
              [[e["model"], e["seeds"]] + [x for k in stats for x in (e.get(k) or ("", ""))] for e in summary])
    write_text(root / "compare.json", json.dumps({"summary": summary, "runs": per_run}, indent=1))
    compare_bars(summary, "map@5" if "map@5" in columns else columns[0], root / "compare.png")
    log(table + f"wrote {root / 'compare.md'}, compare.csv, compare.json, compare.png")
