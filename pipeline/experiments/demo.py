"""The demo: the whole pipeline offline on the embedded dataset. make-data, folds, three small models fine-tuned
from the real ImageNet lite0 weights (heads, pooling, sizes and seeds differ so the ensemble is diverse), each
model's and the equal-weight ensemble's validation and test MAP@5, and a random-init network as the floor.
Writes runs/demo/report.json and report.md."""
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DEMO_MODELS = ["demo_lite0", "demo_lite0_gem", "demo_lite0_small"]
ROOT = Path("runs/demo")


def random_init_map5(cfg: dict) -> float:
    """Val MAP@5 of the first model's architecture with random weights: the floor training must clear."""
    import torch

    from pipeline.data.folds import split
    from pipeline.data.transforms import build_transform
    from pipeline.model.backbone import input_config
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.embeddings import item_set
    from pipeline.retrieval.forward import embed_items
    from pipeline.retrieval.predict import map5
    from pipeline.training.distributed import pick_device

    _, train_items, val_items, classes = split(cfg)
    torch.manual_seed(cfg["seed"])
    model, _ = build_model({**cfg, "pretrained": False, "pretrained_file": ""})
    size, mean, std = input_config(cfg, model.backbone)
    device = pick_device()
    model.to(device)
    q, _ = embed_items(model, val_items, build_transform("val", cfg, size), cfg, device)
    g, _ = embed_items(model, train_items, build_transform("test", cfg, size), cfg, device)
    return map5(item_set(q, val_items), item_set(g, train_items), classes, log=lambda *a: None)


def demo(hotels: int | None = None, seed: int = 0, models: Sequence[str] = DEMO_MODELS, overrides: Iterable[str] = (),
         log: Callable[[str], object] = print) -> dict:
    """Run the demo; returns the report (also in runs/demo/report.json)."""
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset
    from pipeline.experiments.ensemble import ensemble
    from pipeline.io import write_text
    from pipeline.reports.tables import markdown
    from pipeline.training.loop import train

    t_start = time.time()
    data = ROOT / "data"
    make_dataset(data, seed=seed, **({"hotels": hotels} if hotels else {}))
    folds = ROOT / "folds.csv"
    write_folds(load_dataset(data), folds)
    common = [f"data={data}", f"folds_file={folds}", f"runs_dir={ROOT}", *overrides]
    cfgs = [load_config(name, common) for name in models]
    report = {"models": [], "ensemble": {}, "baseline_random_init": {}}
    for cfg in cfgs:
        shutil.rmtree(ROOT / cfg["name"], ignore_errors=True)
        t0 = time.time()
        train(cfg, log=log)
        seconds = time.time() - t0
        single = ensemble([cfg], f"demo_{cfg['name']}", log=log)
        report["models"].append({"name": cfg["name"], "val_map5": single["ensemble"]["val_map5"],
                                 "test_map5": single["ensemble"].get("test_map5"), "train_seconds": round(seconds, 1)})
    both = ensemble(cfgs, "demo_ensemble", log=log)
    report["ensemble"] = {k: both["ensemble"].get(k) for k in ("val_map5", "test_map5")}
    report["baseline_random_init"] = {"val_map5": random_init_map5(cfgs[0])}
    report["total_seconds"] = round(time.time() - t_start, 1)
    write_text(ROOT / "report.json", json.dumps(report, indent=1))
    rows = [(m["name"], m["val_map5"], m["test_map5"], f"{m['train_seconds']:.0f}s") for m in report["models"]]
    rows.append(("ensemble", report["ensemble"]["val_map5"], report["ensemble"]["test_map5"], ""))
    rows.append(("random-init " + cfgs[0]["backbone"], report["baseline_random_init"]["val_map5"], None, ""))
    shown = pd.DataFrame([(n, f"{v:.4f}", "" if t is None else f"{t:.4f}", s) for n, v, t, s in rows],
                         columns=["model", "val MAP@5", "test MAP@5", "train time"])
    table = markdown(shown)
    write_text(ROOT / "report.md", table + f"\ntotal {report['total_seconds']:.0f}s\n")
    log("\n" + table)
    log(f"demo finished in {report['total_seconds']:.0f}s; report: {ROOT / 'report.json'}")
    return report
