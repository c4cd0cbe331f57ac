"""Subsets of an ensemble's models: every subset up to a size, the best of each size marked, the report table
and best.json (the chosen subset with its folds and tricks, for kernel --from-report)."""
import itertools
import json
import math
from pathlib import Path

from pipeline.config import config_from_dict, config_names, fold_text
from pipeline.core.errors import UserError
from pipeline.inference.tricks import DEFAULTS, describe

MAX_SUBSETS = 4096


BEST_JSON, BEST_VERSION = "best.json", 1  # ensemble-report's best subset, for kernel --from-report


def subsets(n: int, max_size: int | None = None) -> list:
    """Index tuples of every non-empty subset of range(n) with at most max_size members: by size, then in order."""
    top = n if max_size is None else min(max_size, n)
    return [s for k in range(1, top + 1) for s in itertools.combinations(range(n), k)]


def count_subsets(n: int, max_size: int | None = None) -> int:
    top = n if max_size is None else min(max_size, n)
    return sum(math.comb(n, k) for k in range(1, top + 1))


def mark_best(rows: list) -> list:
    """Sets row['best_of_size']: True on the highest val MAP@5 of each subset size (the first listed on a tie)."""
    best = {}
    for i, r in enumerate(rows):
        if r["size"] not in best or r["val_map5"] > rows[best[r["size"]]]["val_map5"]:
            best[r["size"]] = i
    for i, r in enumerate(rows):
        r["best_of_size"] = best[r["size"]] == i
    return rows


def write_best(rows: list, path: Path, cfgs: list, tricks: dict) -> dict:
    """best.json: the best subset (highest score, the smaller on a tie) with what rebuilds it: each of its configs
    resolved, the folds, checkpoint and data, and the tricks (--weights cut to the subset)."""
    from pipeline.core.io import write_text

    best = max(rows, key=lambda r: r["val_map5"])  # the first of the best: rows go by size
    configs = config_names(cfgs)
    chosen = [configs.index(m) for m in best["models"]]
    w = tricks["weights"]
    first = {c["name"]: c for c in reversed(cfgs)}  # each config's first run: its resolved config
    record = {"version": BEST_VERSION, "models": best["models"], "val_map5": best["val_map5"],
              "folds": list(dict.fromkeys(c["fold"] for c in cfgs)), "checkpoint": cfgs[0]["checkpoint"],
              "data": str(cfgs[0]["data"]), "tricks": dict(tricks, weights=w and [w[i] for i in chosen]),
              "configs": [{k: v for k, v in first[configs[i]].items() if k != "fold"} for i in chosen]}
    write_text(path, json.dumps(record, indent=1))
    return record


def load_best(report: str | Path, log=print) -> tuple:
    """(runs, tricks) of an ensemble-report's best subset: each of its configs on each of its folds, in the
    report's order. report: the report's folder (runs/ensembles/<out>) or a file in it."""
    from pipeline.inference.tricks import tricks_from_json

    p = Path(report)
    path = p.with_name(BEST_JSON) if p.is_file() else p / BEST_JSON
    if not path.is_file():
        raise UserError(f"{path} not found: --from-report takes the folder of an ensemble-report of this version "
                        "(runs/ensembles/<out>; rerun ./run.sh ensemble-report ... --out NAME)")
    try:
        best = json.loads(path.read_text())
    except ValueError:
        best = None
    if not isinstance(best, dict) or best.get("version") != BEST_VERSION:
        version = best.get("version") if isinstance(best, dict) else None
        raise UserError(f"{path}: not a best.json of this ensemble-report (version {version!r}, this one writes "
                        f"{BEST_VERSION}): rerun ./run.sh ensemble-report")
    try:
        if set(best["tricks"]) != set(DEFAULTS):
            raise KeyError("tricks")
        cfgs = [dict(config_from_dict(c, str(path)), fold=int(k)) for c in best["configs"] for k in best["folds"]]
        tricks, models, score = tricks_from_json(best["tricks"]), best["models"], float(best["val_map5"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: its {e} entry is missing or malformed: rerun ./run.sh ensemble-report") from None
    log(f"{path}: best subset {' + '.join(models)} (MAP@5 {score:.4f}), folds {fold_text(best['folds'])}, "
        f"checkpoint {best['checkpoint']}, tricks: {describe(tricks)}")
    return cfgs, tricks


def write_subset_report(rows: list, out_dir: Path, info: dict, log=print) -> None:
    import pandas as pd

    from pipeline.reports.plots import subset_scores
    from pipeline.reports.tables import write_tables

    frame = pd.DataFrame(rows, columns=["size", "models", "val_map5", "best_of_size"])
    shown = pd.DataFrame({"size": frame["size"].astype(str), "models": [" + ".join(m) for m in frame["models"]],
                          "val MAP@5": [f"**{v:.4f}**" if b else f"{v:.4f}"
                                        for v, b in zip(frame["val_map5"], frame["best_of_size"])],
                          "best of size": ["✓" if b else "" for b in frame["best_of_size"]]})
    table = write_tables(out_dir, "report", frame, shown=shown, info=info, log=lambda *a: None)
    subset_scores(rows, out_dir / "report.png")
    log(table + f"wrote {out_dir / 'report.md'}, report.csv, report.json, report.png")
