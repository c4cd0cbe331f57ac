"""The training options of issue 25 on the demo: demo_lite0 (real ImageNet weights, 3 epochs, fold 0 of the demo's
data) trained once per option, each against the same baseline, in one run. Per option: the selected epoch and its
val MAP@5 (what best.pt keeps), the last epoch's, img/s of the training epochs and the run's seconds. On a CPU the
precision keys (amp, amp_dtype) change nothing (mixed precision is CUDA only), so they are not rows.

usage: python bench/train_options.py [--data runs/demo/data] [--only NAME ...]   -> JSON on stdout
(the data folder and its folds are made as the demo makes them when missing)"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

OPTIONS = {  # name: the overrides that differ from demo_lite0's defaults
    "baseline": [],
    "deterministic": ["deterministic=true"],
    "contiguous": ["channels_last=false"],
    "compile": ["compile=true"],
    "grad_checkpointing": ["grad_checkpointing=true"],
    "clip_norm_1": ["clip_grad=1.0", "clip_mode=norm"],
    "clip_agc_0.02": ["clip_grad=0.02", "clip_mode=agc"],
    "size_schedule_64_80_96": ["image_size_schedule=[[0,64],[1,80],[2,96]]"],
    "layer_decay_0.75": ["layer_decay=0.75"],
    "val_gallery_5": ["val_gallery=5"],
}


def demo_data(data: Path) -> Path:
    """The demo's data folder and folds file (runs/demo/folds.csv beside it), made as the demo does when missing."""
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset

    folds = data.parent / "folds.csv"
    if not (data / ".synth.json").is_file():
        make_dataset(data, seed=0)
    if not folds.is_file():
        write_folds(load_dataset(data), folds, log=lambda *a: None)
    return folds


def train_option(data, folds, runs, overrides):
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.training.loop import train

    cfg = load_config("demo_lite0", [f"data={data}", f"folds_file={folds}", f"runs_dir={runs}", "tensorboard=false",
                                     *overrides])
    t = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        out = train(cfg, log=lambda *a: None)
    seconds = time.time() - t
    m = pd.read_csv(out / "metrics.csv")
    best = m.loc[m["val_map5"].idxmax()]
    return {"selected_epoch": int(best["epoch"]), "selected_val_map5": round(float(best["val_map5"]), 4),
            "last_val_map5": round(float(m["val_map5"].iloc[-1]), 4),
            "train_img_s": round(float(m["images_per_sec"].mean()), 1),
            "val_seconds": round(float(m["val_seconds"].sum()), 1), "seconds": round(seconds, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "demo" / "data")
    p.add_argument("--only", nargs="*", choices=list(OPTIONS), help="these options only (baseline always)")
    args = p.parse_args()
    import torch

    folds = demo_data(args.data)
    names = ["baseline", *[n for n in (args.only or OPTIONS) if n != "baseline"]]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows[name] = {"overrides": OPTIONS[name], **train_option(args.data, folds, Path(tmp) / name, OPTIONS[name])}
            print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    base = rows["baseline"]
    for row in rows.values():
        row["img_s_vs_baseline"] = round(row["train_img_s"] / base["train_img_s"], 3)
    print(json.dumps({"config": "demo_lite0", "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                      "options": rows}, indent=1))


if __name__ == "__main__":
    main()
