"""Compare recipes: train and evaluate every config on the same fold with the same seeds, then the mean and
standard deviation over seeds of each metric, the training time and throughput, next to the zero-shot row.
Runs live in runs/compare/<out>/seed<s>/<config>/fold<k>/; a finished run is reused and an interrupted one
resumed, so rerunning an interrupted comparison loses nothing."""
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from pipeline.config import check_name
from pipeline.core.io import read_table


def _finished(run, cfg):
    """'done', 'partial' (same config, resumable) or None (nothing usable) for a run folder."""
    saved, metrics = run / "config.yaml", run / "metrics.csv"
    if not saved.is_file() or yaml.safe_load(saved.read_text()) != cfg:
        return None
    rows = read_table(metrics) if metrics.is_file() else []
    if len(rows) >= cfg["epochs"] and (run / "best.pt").is_file():
        return "done"
    return "partial" if (run / "last.pt").is_file() else None


def _train_stats(run):
    """Training seconds and images/s (metrics.csv), and the trained parameters in millions (model and head: a clip
    run's text tower included; best.pt read with weights_only)."""
    from pipeline.core.checkpoint import load

    rows = read_table(run / "metrics.csv")
    state = load(run / "best.pt")
    params = sum(v.numel() for part in ("model", "head") for v in state[part].values() if v.is_floating_point())
    return {"params_m": params / 1e6, "train_seconds": sum(map(float, rows["seconds"])),
            "images_per_sec": statistics.mean(map(float, rows["images_per_sec"]))}


def compare(cfgs: list[dict], seeds: int, metrics: list[str], ks: list[int], out: str, zero_shot: str | None = None,
            log: Callable[[str], object] = print) -> list[dict]:
    """Returns the summary rows (one per config, plus the zero-shot row first)."""
    from pipeline.config import run_dir
    from pipeline.experiments.evaluate import evaluate_runs
    from pipeline.experiments.zero_shot import zero_shot_row
    from pipeline.training.loop import train

    root = Path(cfgs[0]["runs_dir"]) / "compare" / check_name(out, "--out")
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
            rows = evaluate_runs([c], metrics, ks, log=lambda *a: None)
            row = rows[-1]  # a clip run's untrained reference comes first (metric text)
            row.update(_train_stats(run), model=c["name"], seed=seed)
            per_run += [dict(r, seed=seed) for r in rows[:-1]] + [row]
            log(f"    val MAP@5 {row.get('map@5', float('nan')):.4f}, {row['train_seconds']:.0f}s "
                f"({time.time() - t0:.0f}s elapsed)")
    stats = ("train_seconds", "images_per_sec", "params_m")
    columns = list(dict.fromkeys(k for r in per_run for k in r if k not in ("model", "seed", *stats)))
    summary = []
    if (zero_shot or "").lower() != "none":
        backbone = zero_shot or cfgs[0]["backbone"]
        zs = zero_shot_row(cfgs[0], backbone, metrics, ks, log=lambda *a: None)
        summary.append({"model": zs["model"], "seeds": 0,
                        **{k: (zs[k], 0.0) for k in columns if k in zs}})
    for name in list(dict.fromkeys(r["model"] for r in per_run)):
        rows = [r for r in per_run if r["model"] == name]
        entry = {"model": name, "seeds": len(rows)}
        for k in columns + list(stats):
            vals = [r[k] for r in rows if k in r]
            if vals:
                entry[k] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        summary.append(entry)
    _write(root, summary, per_run, columns, log)
    return summary


def _write(root, summary, per_run, columns, log):
    """compare.md (mean ± std), compare.csv and compare.json (a <metric>_mean and _std column per statistic; the
    JSON also holds every run's row), compare.png."""
    import pandas as pd

    from pipeline.reports.plots import compare_bars
    from pipeline.reports.tables import write_tables

    stats = columns + ["params_m", "train_seconds", "images_per_sec"]
    digits = {"train_seconds": 0, "images_per_sec": 1, "params_m": 2}
    frame = pd.DataFrame([{"model": e["model"], "seeds": e["seeds"],
                           **{f"{k}_{s}": v for k in stats if k in e for s, v in zip(("mean", "std"), e[k])}}
                          for e in summary], columns=["model", "seeds"] + [f"{k}_{s}" for k in stats
                                                                             for s in ("mean", "std")])
    shown = pd.DataFrame([[e["model"], str(e["seeds"])] + [
        f"{e[k][0]:.{digits.get(k, 4)}f} ± {e[k][1]:.{digits.get(k, 4)}f}" if k in e else "" for k in stats]
        for e in summary], columns=["model", "seeds"] + stats)
    table = write_tables(root, "compare", frame, shown=shown, info={"runs": per_run}, log=lambda *a: None)
    compare_bars(summary, "map@5" if "map@5" in columns else columns[0], root / "compare.png")
    log(table + f"wrote {root / 'compare.md'}, compare.csv, compare.json, compare.png")
