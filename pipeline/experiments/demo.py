"""The demo: the whole pipeline offline on the embedded dataset. make-data, folds, three small models fine-tuned
from the real ImageNet weights of three architectures (lite0, lite1, lite2; heads, pooling, sizes and seeds differ
so the ensemble is diverse), each model's and the equal-weight ensemble's validation MAP@5 (with the config's
val_weights, each query once, class-balanced) and test MAP@5 with their gaps, the ensemble's gain over the best
single model, the pseudo-labels' precision by threshold, and a random-init network as the floor. Writes
runs/demo/report.json and report.md."""
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DEMO_MODELS = ["demo_lite0", "demo_lite1", "demo_lite2"]
PSEUDO_THRESHOLD = 0.05  # margin of the pseudo-labels the demo reports (their precision per threshold beside it)
ROOT = Path("runs/demo")


def random_init_map5(cfg: dict) -> float:
    """Val MAP@5 of the first model's architecture with random weights: the floor training must clear."""
    import torch

    from pipeline.core.device import pick_device
    from pipeline.data.folds import labelled, split
    from pipeline.data.transforms import build_transform
    from pipeline.inference.predict import map5
    from pipeline.model.backbone import input_config
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.embeddings import item_set
    from pipeline.retrieval.forward import embed_items

    _, train_items, val_items, classes = split(cfg)
    torch.manual_seed(cfg["seed"])
    model, _ = build_model({**cfg, "pretrained": False, "pretrained_file": ""})
    size, mean, std = input_config(cfg, model.backbone)
    device = pick_device()
    model.to(device)
    q, _ = embed_items(model, val_items, build_transform("val", cfg, size), cfg, device)
    gallery = labelled(train_items)  # pseudo-labelled images are never a gallery
    g, _ = embed_items(model, gallery, build_transform("test", cfg, size), cfg, device)
    return map5(item_set(q, val_items), item_set(g, gallery), classes, log=lambda *a: None)


def demo(hotels: int | None = None, seed: int = 0, models: Sequence[str] = DEMO_MODELS, overrides: Iterable[str] = (),
         log: Callable[[str], object] = print, round2: Sequence[float] = ()) -> dict:
    """Run the demo; returns the report (also in runs/demo/report.json). round2: thresholds at which the first
    model is trained again with the ensemble's pseudo-labels added (its test MAP@5 against round 1's)."""
    from pipeline.config import load_config
    from pipeline.core.io import write_text
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset
    from pipeline.experiments.ensemble import ensemble
    from pipeline.experiments.pseudo import pseudo_labels
    from pipeline.reports.tables import markdown
    from pipeline.training.loop import train

    t_start = time.time()
    data = ROOT / "data"
    make_dataset(data, seed=seed, **({"hotels": hotels} if hotels else {}))
    folds = ROOT / "folds.csv"
    write_folds(load_dataset(data), folds)
    common = [f"data={data}", f"folds_file={folds}", f"runs_dir={ROOT}", *overrides]
    cfgs = [load_config(name, common) for name in models]
    report = {"models": [], "ensemble": {}, "baseline_random_init": {}, "val_weights": cfgs[0]["val_weights"]}
    singles = []
    for cfg in cfgs:
        shutil.rmtree(ROOT / cfg["name"], ignore_errors=True)
        t0 = time.time()
        train(cfg, log=log)
        seconds = time.time() - t0
        singles.append((cfg["name"], ensemble([cfg], f"demo_{cfg['name']}", log=log), round(seconds, 1)))
    both = ensemble(cfgs, "demo_ensemble", log=log)
    weighted = weighted_val(cfgs)
    report["models"] = [{"name": name, **scores(single["ensemble"], w), "train_seconds": seconds}
                        for (name, single, seconds), w in zip(singles, weighted)]
    report["ensemble"] = scores(both["ensemble"], weighted[-1])
    report["goals"] = goals(report)
    pseudo = pseudo_labels(cfgs, PSEUDO_THRESHOLD, truth=data / "test_truth.csv", log=log)
    report["pseudo"] = {"threshold": PSEUDO_THRESHOLD, "kept": pseudo.kept, "total": pseudo.total,
                        "precision": pseudo.precision, "by_threshold": pseudo.table.to_dict("records")}
    if round2:
        report["pseudo"]["round2"] = pseudo_rounds(cfgs, round2, data / "test_truth.csv", report["models"][0], log)
    report["baseline_random_init"] = {"val_map5": random_init_map5(cfgs[0])}
    report["total_seconds"] = round(time.time() - t_start, 1)
    write_text(ROOT / "report.json", json.dumps(report, indent=1))
    table = markdown(report_table(report, cfgs[0]["backbone"])) + _goal_lines(report)
    write_text(ROOT / "report.md", table + f"\ntotal {report['total_seconds']:.0f}s\n")
    log("\n" + table)
    log(f"demo finished in {report['total_seconds']:.0f}s; report: {ROOT / 'report.json'}")
    return report


def pseudo_rounds(cfgs: list, thresholds: Sequence[float], truth: Path, first: dict, log=print) -> list:
    """Round 2 of the first model at each threshold: trained afresh (same config and seed) on its training images
    plus the ensemble's pseudo-labelled test images, in runs/demo/round2-T<t>/; its test MAP@5 against round 1's."""
    from pipeline.experiments.ensemble import ensemble
    from pipeline.experiments.pseudo import pseudo_labels
    from pipeline.training.loop import train

    rows, quiet = [], (lambda *a: None)
    for t in thresholds:
        labels = pseudo_labels(cfgs, t, out=ROOT / "pseudo" / f"T{t}.csv", truth=truth, log=quiet)
        cfg = dict(cfgs[0], pseudo=str(labels.path), runs_dir=str(ROOT / f"round2-T{t}"))
        shutil.rmtree(ROOT / f"round2-T{t}", ignore_errors=True)
        train(cfg, log=quiet)
        test = ensemble([cfg], f"demo_round2_T{t}", log=quiet)["ensemble"]["test_map5"]
        rows.append({"threshold": t, "kept": labels.kept, "precision": labels.precision, "test_map5": test,
                     "gain": test - first["test_map5"]})
        log(f"round 2 at margin >= {t}: {labels.kept} pseudo-labels (precision {labels.precision or 0:.3f}); "
            f"{cfg['name']} test MAP@5 {test:.4f} ({test - first['test_map5']:+.4f} over round 1)")
    return rows


def weighted_val(cfgs: list) -> list:
    """Validation MAP@5 of each run alone, then of their ensemble, with the queries weighted by the config's
    val_weights (training/validation.py), from the cached embeddings ensemble() made; folds pooled, each fold's
    weights its own."""
    import numpy as np

    from pipeline.data.layouts import load_dataset
    from pipeline.inference.predict import oof_predictions
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.retrieval.runsets import load_fold_sets
    from pipeline.training.validation import query_weights, weighted_map5

    quiet = lambda *a: None  # noqa: E731
    sets = load_fold_sets(cfgs, dict(DEFAULTS), log=quiet)
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    out = []
    for models in [[i] for i in range(len(sets.configs))] + [None]:
        per_fold, _ = oof_predictions(sets, classes, DEFAULTS, cfgs[0]["max_memory"], quiet, models)
        preds = [p for ps, _ in per_fold.values() for p in ps]
        truth = [t for _, ts in per_fold.values() for t in ts]
        weights = [query_weights(cfgs[0]["val_weights"], ts, sets.folds[f].val_gallery.labels)
                   for f, (_, ts) in per_fold.items()]
        out.append(weighted_map5(preds, truth, np.concatenate(weights)))
    return out


def scores(result: dict, weighted: float | None = None) -> dict:
    """An ensemble() result's validation (each query once and class-balanced; weighted: with val_weights) and test
    MAP@5, the test - validation gaps and which validation figure is nearest the test score."""
    val, bal, test = result["val_map5"], result["val_map5_balanced"], result.get("test_map5")
    out = {"val_map5": val, "val_map5_balanced": bal, "test_map5": test}
    figures = {"plain": val, "class-balanced": bal}
    if weighted is not None:
        out["val_map5_weighted"] = figures["weighted"] = weighted
    if test is not None:
        out.update(test_minus_val=test - val, test_minus_val_balanced=test - bal,
                   nearer_test=min(figures, key=lambda k: abs(test - figures[k])))
        if weighted is not None:
            out["test_minus_val_weighted"] = test - weighted
    return out


def _gap(scored: dict) -> float:
    # the weighted validation's gap where the report has it (val_weights), else the plain one's
    return abs(scored.get("test_minus_val_weighted", scored["test_minus_val"]))


def goals(report: dict) -> dict:
    """The demo's goals: the ensemble >= 1.10 x the best single model on validation and on test, its
    |validation - test| <= 0.05 and each model's <= 0.06 (validation weighted by val_weights where the report has
    it, else plain; the plain and class-balanced gaps beside it)."""
    best = {k: max(m[k] for m in report["models"]) for k in ("val_map5", "test_map5")}
    e = report["ensemble"]
    out = {"ensemble_over_best_val": e["val_map5"] / best["val_map5"],
           "ensemble_over_best_test": e["test_map5"] / best["test_map5"],
           "abs_val_test_gap": _gap(e), "abs_val_test_gap_plain": abs(e["test_minus_val"]),
           "abs_val_test_gap_balanced": abs(e["test_minus_val_balanced"]),
           "max_model_gap": max(_gap(m) for m in report["models"])}
    out["met"] = {"val_gain_1.10": out["ensemble_over_best_val"] >= 1.10,
                  "test_gain_1.10": out["ensemble_over_best_test"] >= 1.10, "gap_0.05": out["abs_val_test_gap"] <= 0.05,
                  "model_gap_0.06": out["max_model_gap"] <= 0.06}
    return out


def report_table(report, backbone):
    """The report's table: per model and for the ensemble the validation MAP@5 (weighted by val_weights; each
    query once; class-balanced), the test MAP@5 and the test - validation gaps."""
    import pandas as pd

    rows = [(m["name"], m, f"{m['train_seconds']:.0f}s") for m in report["models"]]
    rows.append(("ensemble", report["ensemble"], ""))
    rows.append((f"random-init {backbone} (each query once)",
                 {"val_map5": report["baseline_random_init"]["val_map5"]}, ""))
    f = (lambda v: "" if v is None else f"{v:.4f}")
    d = (lambda t, v: "" if t is None or v is None else f"{t - v:+.4f}")
    how = report.get("val_weights", "hotels")
    return pd.DataFrame([(n, f(m.get("val_map5_weighted")), f(m["val_map5"]), f(m.get("val_map5_balanced")),
                          f(m.get("test_map5")), d(m.get("test_map5"), m.get("val_map5_weighted")),
                          d(m.get("test_map5"), m["val_map5"]), s) for n, m, s in rows],
                        columns=["model", f"val MAP@5 ({how})", "val each query", "val class-balanced", "test MAP@5",
                                 "test - val", "test - val each query", "train time"])


def _goal_lines(report):
    g, p = report["goals"], report["pseudo"]
    ok = (lambda key: "met" if g["met"][key] else "NOT met")
    return (f"\nensemble / best single: val {g['ensemble_over_best_val']:.3f}x ({ok('val_gain_1.10')}, goal 1.10), "
            f"test {g['ensemble_over_best_test']:.3f}x ({ok('test_gain_1.10')}); |val - test| "
            f"{g['abs_val_test_gap']:.4f} ({ok('gap_0.05')}, goal 0.05; each query once "
            f"{g['abs_val_test_gap_plain']:.4f}, class-balanced {g['abs_val_test_gap_balanced']:.4f}, nearest: "
            f"{report['ensemble'].get('nearer_test')}); largest model |val - test| {g['max_model_gap']:.4f} "
            f"({ok('model_gap_0.06')}, goal 0.06)\n"
            f"pseudo-labels at margin >= {p['threshold']}: {p['kept']}/{p['total']} test images, precision "
            + ("n/a" if p["precision"] is None else f"{p['precision']:.3f}") + "\n")
