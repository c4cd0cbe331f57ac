"""Pseudo-labels (SPEC 5, the 3rd place): the test images that the equal-weight ensemble of trained runs labels
with confidence, as a labelled CSV for a second round of training (config key pseudo=FILE: data/folds.py adds them
to the training images only). The test images are ranked exactly as `ensemble` ranks them (summed cosines, per-class
max over the gallery, the config's search); confidence is the margin, the top-1 class score minus the top-2 one, on
the mean-cosine scale (the scores divided by the sum of the models' weights, one each), so a threshold means the
same for one model as for ten."""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import UserError
from pipeline.data.folds import PSEUDO_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

GRID = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2)  # the thresholds the quality table reports beside the chosen one


@dataclass
class PseudoResult:
    path: Path  # the CSV: image_id,label,margin,score of the kept test images, in submission order
    kept: int  # its rows
    total: int  # the test images ranked
    precision: float | None  # of the kept labels against the truth (None: no truth given, or none kept)
    table: "pd.DataFrame | None"  # with truth, per threshold: threshold, kept, fraction (of total), precision


def margins(cfgs: list, log=print) -> tuple:
    """(test ids, top-1 labels, top-1 scores, margins) of the equal-weight ensemble of the runs, on the mean-cosine
    scale; a gallery of one class has margin inf."""
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.reranking import rank_with_tricks
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.retrieval.rank import encode
    from pipeline.retrieval.runsets import load_fold_sets
    from pipeline.retrieval.search import Search

    search = Search.of(cfgs[0])
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    if not ds.test_ids:
        raise UserError(f"{ds.root}: no test images to pseudo-label")
    every = load_fold_sets(cfgs, DEFAULTS, log=log).every
    codes, scores = rank_with_tricks(list(every.test.arrays), list(every.gallery.arrays),
                            encode(every.gallery.labels, ds.classes), k=2, max_memory=cfgs[0]["max_memory"], log=log,
                            search=search)
    scores = scores.astype(np.float64) / len(every.test.arrays)  # weight 1 per run: their sum is the run count
    return list(every.test.ids), [ds.classes[c] for c in codes[:, 0]], scores[:, 0], scores[:, 0] - scores[:, 1]


def pseudo_labels(cfgs: list, threshold: float, out: str | Path | None = None, truth: str | Path | None = None,
                  log=print) -> PseudoResult:
    """Writes the test images whose margin >= threshold with their top-1 label (out: default
    <runs_dir>/pseudo/<configs joined by +>[-folds<SET>].csv) and beside it <stem>.json (the choices and counts);
    with truth (a CSV image_id,<label>, e.g. make-data's test_truth.csv) also <stem>_quality.md/.csv/.json: the kept
    count and precision at each threshold of GRID and the chosen one."""
    import pandas as pd

    from pipeline.config import config_names, fold_text, run_names
    from pipeline.core.io import write_table, write_text

    if not cfgs:
        raise UserError("no configs given: ./run.sh pseudo m1 m2 ... --threshold 0.05")
    if not math.isfinite(threshold) or threshold < 0:
        raise UserError(f"--threshold {threshold:g}: give a margin >= 0 (mean-cosine units, e.g. 0.05)")
    folds = sorted({c["fold"] for c in cfgs})
    name = "+".join(config_names(cfgs)) + (f"-folds{fold_text(folds)}" if len(folds) > 1 else "")
    path = Path(out) if out else Path(cfgs[0]["runs_dir"]) / "pseudo" / f"{name}.csv"
    if path.suffix != ".csv":
        raise UserError(f"--out {path}: give a .csv file (its choices go beside it, as .json)")
    ids, labels, top, margin = margins(cfgs, log)
    keep = margin >= threshold
    rows = np.flatnonzero(keep)
    frame = pd.DataFrame({"image_id": [ids[i] for i in rows], "label": [labels[i] for i in rows],
                          "margin": np.round(margin[rows], 6), "score": np.round(top[rows], 6)}, columns=PSEUDO_COLUMNS)
    write_table(path, frame)
    result = PseudoResult(path, int(keep.sum()), len(ids), None, None)
    if truth:
        result.precision, result.table = _quality(path, ids, labels, margin, threshold, truth, log)
    choices = {"configs": config_names(cfgs), "folds": folds, "runs": run_names(cfgs), "data": str(cfgs[0]["data"]),
               "checkpoint": cfgs[0]["checkpoint"], "search": cfgs[0]["search"], "threshold": threshold,
               "margin": "top-1 minus top-2 class score, mean cosine of the runs", "kept": result.kept,
               "total": result.total, "truth": str(truth) if truth else None, "precision": result.precision}
    write_text(path.with_suffix(".json"), json.dumps(choices, indent=1))
    quality = f", precision {result.precision:.4f} against {truth}" if result.precision is not None else ""
    log(f"pseudo-labels: {result.kept} of {result.total} test images with margin >= {threshold:g} "
        f"({len(cfgs)} runs of {' '.join(config_names(cfgs))}){quality}: wrote {path}")
    return result


def _quality(path, ids, labels, margin, threshold, truth_path, log):
    """(precision of the kept labels or None, the per-threshold table), the table written beside path."""
    import pandas as pd

    from pipeline.core.io import read_table
    from pipeline.reports.tables import write_tables
    from pipeline.retrieval.submission import read_truth

    truth = read_truth(truth_path, *read_table(truth_path).columns[:2])
    missing = [i for i in ids if i not in truth]
    if missing:
        raise UserError(f"--truth {truth_path}: no label for test image '{missing[0]}' ({len(missing)} missing); "
                        "give the truth of every test image (make-data writes test_truth.csv)")
    right = np.array([truth[i] == x for i, x in zip(ids, labels)], bool)
    rows = []
    for t in sorted({*GRID, threshold}):
        kept = margin >= t
        rows.append({"threshold": t, "kept": int(kept.sum()), "fraction": kept.mean() if len(ids) else 0.0,
                     "precision": right[kept].mean() if kept.any() else float("nan")})
    table = pd.DataFrame(rows)
    shown = pd.DataFrame({"threshold": [f"**{t:g}**" if t == threshold else f"{t:g}" for t in table["threshold"]],
                          "kept": table["kept"].astype(str), "fraction": table["fraction"].map("{:.3f}".format),
                          "precision": table["precision"].map(lambda p: "-" if math.isnan(p) else f"{p:.4f}")})
    write_tables(path.parent, f"{path.stem}_quality", table, shown=shown, log=log,
                 title=f"pseudo-label quality of {path.name} against {truth_path} ({len(ids)} test images)")
    chosen = table["precision"][table["threshold"] == threshold].iloc[0]
    return (None if math.isnan(chosen) else float(chosen)), table
