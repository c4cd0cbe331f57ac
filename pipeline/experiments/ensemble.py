"""Equal-weight ensembles of trained runs: the summed cosine similarities of the models, per-class max over the
gallery, top 5 classes. `ensemble` scores each model and their ensemble on the validation fold and writes the test
submission; `ensemble_report` scores every subset of the models (the 7th-place paper's Table 2)."""
import json
import time
from pathlib import Path

from pipeline.config import check_name, config_names, fold_text
from pipeline.core.errors import UserError
from pipeline.core.progress import Progress
from pipeline.experiments.subsets import (
    BEST_JSON,
    MAX_SUBSETS,
    count_subsets,
    load_best,
    mark_best,
    subsets,
    write_best,
    write_subset_report,
)
from pipeline.inference.predict import oof_map5, predict
from pipeline.inference.tricks import DEFAULTS, describe
from pipeline.retrieval.runsets import every_run_tricks, load_fold_sets


def ensemble(cfgs: list, out_name: str | None = None, log=print, tricks: dict | None = None) -> dict:
    """Returns {'models': {name: val_map5}, 'ensemble': {'val_map5', 'test_map5'?}, 'submission': path} and writes
    submissions/<out>.csv, runs/ensembles/<out>/scores.json and scores.md. Runs of the configs on several folds
    (m1/fold0 ...): each model and the ensemble are scored out of fold (per fold its runs on its validation images,
    pooled: 'ensemble' also has 'folds', and 'out_of_fold' each config's score), and the test images are ranked
    with every fold model."""
    import pandas as pd

    from pipeline.core.io import read_table, write_text
    from pipeline.data.layouts import load_dataset
    from pipeline.reports.tables import markdown
    from pipeline.retrieval.metrics import map_at_k
    from pipeline.retrieval.search import Search
    from pipeline.retrieval.submission import read_truth, write_submission

    tricks = tricks or dict(DEFAULTS)
    if out_name:  # the default, made of config names, is a name already
        check_name(out_name, "--out")
    search = Search.of(cfgs[0])  # how the test images are ranked (validation scores stay exact); checked first
    sets = load_fold_sets(cfgs, tricks, log=log)
    several = len(sets.folds) > 1
    folds = fold_text(sets.folds)
    out_name = out_name or "+".join(sets.configs) + (f"-folds{folds}" if several else "")
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    classes, mem = ds.classes, cfgs[0]["max_memory"]
    report = {"models": {}, "ensemble": {}, "folds": list(sets.folds), "tricks": tricks}
    if not several:
        report["fold"] = cfgs[0]["fold"]
    if tricks != DEFAULTS:
        log(f"inference tricks: {describe(tricks)}")
    rows = []
    if several:
        sets.need_val(cfgs[0])
    if all(inputs.val.ids for inputs in sets.folds.values()):
        each = Progress(len(sets.configs), "ensemble: scoring each model", "models", log, sets.configs, final=False)
        for i, config in enumerate(each):  # with DBA or QE at full scale a model takes minutes
            per_fold, pooled, _ = oof_map5(sets, classes, tricks, mem, log, models=[i])
            for fold, (score, _) in per_fold.items():
                report["models"][sets.folds[fold].names[i]] = score
            if several:
                report.setdefault("out_of_fold", {})[config] = pooled
        per_fold, report["ensemble"]["val_map5"], report["ensemble"]["val_map5_balanced"] = oof_map5(
            sets, classes, tricks, mem, log)
        rows = [(n, f"{s:.4f}") for n, s in report["models"].items()]
        label = f"ensemble ({len(sets.configs)})"
        if several:
            report["ensemble"]["folds"] = {str(f): s for f, (s, _) in per_fold.items()}
            rows += [(f"{c} out-of-fold", f"{s:.4f}") for c, s in report["out_of_fold"].items()]
            rows += [(f"ensemble fold {f}", f"{s:.4f}") for f, (s, _) in per_fold.items()]
            label = f"ensemble out-of-fold ({len(sets.configs)} configs x folds {folds})"
        rows.append((f"**{label}**", f"**{report['ensemble']['val_map5']:.4f}**"))
        rows.append((f"{label}, each class weighted equally", f"{report['ensemble']['val_map5_balanced']:.4f}"))
    sub_path, truth_path = None, Path(cfgs[0]["data"]) / "test_truth.csv"
    if ds.test_ids:
        every = sets.every
        preds = predict(every.test.arrays, every.gallery, classes, every_run_tricks(tricks, cfgs), mem, log,
                        search=search, views=[v.arrays for v in every.test.views], centers=every.centers)
        sub_path = Path("submissions") / f"{out_name}.csv"
        write_submission(sub_path, every.test.ids, preds, expected_ids=ds.test_ids, known_classes=classes,
                         id_column=ds.id_column, label_column=ds.label_column)
        if truth_path.is_file():  # the embedded dataset ships its answers, under its own header
            truth = read_truth(truth_path, *read_table(truth_path).columns[:2])
            report["ensemble"]["test_map5"] = map_at_k(preds, [truth[i] for i in every.test.ids], k=5)
    report["submission"] = str(sub_path) if sub_path else None
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    write_text(out_dir / "scores.json", json.dumps(report, indent=1))
    table = markdown(pd.DataFrame(rows, columns=["model", "val MAP@5"]))
    write_text(out_dir / "scores.md", table)
    log(table.rstrip())
    if "test_map5" in report["ensemble"]:
        log(f"test MAP@5 against {truth_path}: {report['ensemble']['test_map5']:.4f}")
    if sub_path:
        log(f"wrote {sub_path} ({len(preds)} rows, ranked with {len(every.names)} models: {' '.join(every.names)})")
    return report


def ensemble_report(cfgs: list, max_size: int | None = None, out_name: str | None = None, log=print,
                    tricks: dict | None = None, auto: bool = False) -> list:
    """Val MAP@5 of every subset's equal-weight ensemble (each model's embeddings loaded once; runs of the configs on
    several folds: the out-of-fold MAP@5 of each subset of configs); returns the rows [{'models': [names], 'size',
    'val_map5', 'best_of_size'}] (by size, then in config order) and writes runs/ensembles/<out>/report.md, .csv,
    .json, .png and best.json (what `kernel --from-report` builds)."""
    from pipeline.data.layouts import load_dataset

    tricks = tricks or dict(DEFAULTS)
    if out_name:
        check_name(out_name, "--out")
    names = config_names(cfgs)
    total = count_subsets(len(names), max_size)
    if total > MAX_SUBSETS:
        fit = max(k for k in range(1, len(names) + 1) if count_subsets(len(names), k) <= MAX_SUBSETS)
        raise UserError(f"{len(names)} models have {total} subsets (more than {MAX_SUBSETS}): limit them with "
                        f"--max-size {fit} or fewer")
    sets = load_fold_sets(cfgs, tricks, log=log)
    several = len(sets.folds) > 1
    out_name = out_name or "+".join(names) + (f"-folds{fold_text(sets.folds)}" if several else "")
    sets.need_val(cfgs[0])
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    rows, t0 = [], time.time()
    what = "out-of-fold" if several else "val"
    for n, s in enumerate(subsets(len(names), max_size), start=1):
        score = oof_map5(sets, classes, tricks, cfgs[0]["max_memory"], log, models=s)[1]
        rows.append({"models": [names[i] for i in s], "size": len(s), "val_map5": score})
        log(f"[{n}/{total}] {'+'.join(names[i] for i in s)}: {what} MAP@5 {score:.4f} ({time.time() - t0:.0f}s)")
    mark_best(rows)
    info = {"models": names, "max_size": max_size or len(names), "folds": list(sets.folds),
            "data": str(cfgs[0]["data"]), "val_images": sum(len(x.val) for x in sets.folds.values()),
            "tricks": tricks}
    if not several:
        info.update(fold=cfgs[0]["fold"], gallery_images=len(sets.every.val_gallery))
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    write_subset_report(rows, out_dir, info, log)
    if auto:
        from pipeline.experiments.ablate import auto_choose

        best = auto_choose(cfgs, tricks, out_dir, seed=cfgs[0]["seed"], log=log)
    else:
        best = write_best(rows, out_dir / BEST_JSON, cfgs, tricks)
    log(f"best: {' + '.join(best['models'])} ({best['val_map5']:.4f}) in {out_dir / BEST_JSON}; package it with "
        f"./run.sh kernel NAME --from-report {out_dir}")
    return rows


def kernel_runs(args) -> tuple:
    """(runs, tricks) a kernel packages, from the kernel stage's flags: --models with the run-set and trick flags,
    or --from-report alone (the report fixes the runs, data and tricks, so any of those flags is a UserError)."""
    from pipeline.config import load_run_set
    from pipeline.inference.tricks import tricks_from_args

    if args.from_report:
        given = [flag for flag, value in (("--data", args.data), ("--fold", args.fold), ("--folds", args.folds),
                                          ("--checkpoint", args.checkpoint), ("--max-memory", args.max_memory),
                                          ("key=value overrides", args.overrides)) if value not in (None, [])]
        if given or args.weights or tricks_from_args(args, 1) != DEFAULTS:
            raise UserError(f"--from-report takes the runs, data and inference tricks from the report: drop "
                            f"{', '.join(given) or 'the inference-trick flags'}")
        return load_best(args.from_report)
    if not args.models:
        raise UserError("nothing to package: give --models m1 m2 ... or --from-report runs/ensembles/<out>")
    cfgs = load_run_set(args.models, args)
    return cfgs, tricks_from_args(args, len(config_names(cfgs)))
