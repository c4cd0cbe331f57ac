"""Run the whole pipeline offline on the embedded dataset, then print and save a report.

make-data, folds, train three small models (all fine-tuned from the real ImageNet lite0 weights, the only
ImageNet weights available offline; heads, pooling, sizes and seeds differ so the ensemble is diverse), embed,
evaluate each and the equal-weight ensemble on the validation fold, score the test submissions against the
generated truth, and compare with a random-init network. Writes runs/demo/report.json and runs/demo/report.md.

example: ./run.sh demo"""
import json
import shutil
import time
from pathlib import Path

DEMO_MODELS = ["demo_lite0", "demo_lite0_gem", "demo_lite0_small"]
ROOT = Path("runs/demo")


def add_arguments(p):
    p.add_argument("--hotels", type=int, default=None, help="hotels in the generated dataset (default: make-data's)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--models", nargs="+", default=DEMO_MODELS, help="configs to train (default: the three demo ones)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every demo model")


def random_init_map5(cfg):
    """Val MAP@5 of the first model's architecture with random weights: the floor training must clear."""
    import torch

    from .data.transforms import build_transform
    from .inference import embed_items, pick_device
    from .model import build_model, input_config
    from .retrieval import map5
    from .train import split

    _, train_items, val_items, classes = split(cfg)
    torch.manual_seed(cfg["seed"])
    model, _ = build_model({**cfg, "pretrained": False, "pretrained_file": ""})
    size, mean, std = input_config(cfg, model.backbone)
    device = pick_device()
    model.to(device)
    q, _ = embed_items(model, val_items, build_transform("val", cfg, size, mean, std), cfg, device)
    g, _ = embed_items(model, train_items, build_transform("test", cfg, size, mean, std), cfg, device)
    return map5([q], [it.label for it in val_items], [g], [it.label for it in train_items], classes,
                log=lambda *a: None)


def run(args):
    from .config import load_config
    from .ensemble import ensemble
    from .folds import write_folds
    from .data.layouts import load_dataset
    from .io import write_text
    from .synth import make_dataset
    from .train import train

    t_start = time.time()
    data = ROOT / "data"
    kw = {"hotels": args.hotels} if args.hotels else {}
    make_dataset(data, seed=args.seed, **kw)
    folds = ROOT / "folds.csv"
    write_folds(load_dataset(data), folds)
    common = [f"data={data}", f"folds_file={folds}", f"runs_dir={ROOT}", *args.overrides]
    cfgs = [load_config(name, common) for name in args.models]
    report = {"models": [], "ensemble": {}, "baseline_random_init": {}}
    for cfg in cfgs:
        shutil.rmtree(ROOT / cfg["name"], ignore_errors=True)
        t0 = time.time()
        train(cfg)
        seconds = time.time() - t0
        single = ensemble([cfg], f"demo_{cfg['name']}")
        report["models"].append({"name": cfg["name"], "val_map5": single["ensemble"]["val_map5"],
                                 "test_map5": single["ensemble"].get("test_map5"), "train_seconds": round(seconds, 1)})
    both = ensemble(cfgs, "demo_ensemble")
    report["ensemble"] = {k: both["ensemble"].get(k) for k in ("val_map5", "test_map5")}
    report["baseline_random_init"] = {"val_map5": random_init_map5(cfgs[0])}
    report["total_seconds"] = round(time.time() - t_start, 1)
    write_text(ROOT / "report.json", json.dumps(report, indent=1))
    rows = [(m["name"], m["val_map5"], m["test_map5"], f"{m['train_seconds']:.0f}s") for m in report["models"]]
    rows.append(("ensemble", report["ensemble"]["val_map5"], report["ensemble"]["test_map5"], ""))
    rows.append(("random-init " + cfgs[0]["backbone"], report["baseline_random_init"]["val_map5"], None, ""))
    table = ["| model | val MAP@5 | test MAP@5 | train time |", "|---|---|---|---|"]
    table += [f"| {n} | {v:.4f} | {'' if t is None else f'{t:.4f}'} | {s} |" for n, v, t, s in rows]
    write_text(ROOT / "report.md", "\n".join(table) + f"\n\ntotal {report['total_seconds']:.0f}s\n")
    print("\n" + "\n".join(table))
    print(f"\ndemo finished in {report['total_seconds']:.0f}s; report: {ROOT / 'report.json'}")
