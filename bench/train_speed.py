"""Training throughput, side by side in one run: our training loop (pipeline.training.loop.train, one epoch, no
validation) against a reference loop fed by timm's own data pipeline (timm.data.create_dataset + create_loader with
its prefetcher: uint8 batches normalised on the device), both training the same model (our embedder and ArcFace
head), optimiser (SGD), batch, image size, worker count and memory format (channels_last).

Datasets: (a) the demo images (320x240 rooms, 128-192 px photos), (b) 1024-px JPEGs (make-data --photo-size 1024).
Ours runs three ways: full-size decoding as the reference does (image_scale=0), reduced decoding (image_scale=1.5:
large JPEGs decoded at 1/2-1/8 scale), and the image cache (image_cache=true, memmap, built before timing). Also
measured: reading the cache back, memmap against jpeg, img/s in one process, and bytes per image.

Goals (issue 14): ours >= 1.0x the reference uncached; >= 1.5x with the cache on 1024-px photos.

usage: python bench/train_speed.py [--device cpu|cuda] [--amp] [--quick] [--repeats 2]   -> JSON on stdout"""
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


def bench_data(name, hotels, photo_size, work):
    """A make-data folder (reused when its marker matches) and a folds file with no validation fold."""
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset

    data = ROOT / "data" / f"bench-{name}-{hotels}"
    marker = data / ".synth.json"
    want = {"hotels": hotels, **({"photo_size": photo_size} if photo_size else {})}
    if not (marker.is_file() and all(json.loads(marker.read_text()).get(k) == v for k, v in want.items())):
        make_dataset(data, seed=0, hotels=hotels, photo_size=photo_size)
    folds = work / f"{name}.folds.csv"
    write_folds(load_dataset(data), folds, n_folds=5, seed=0, log=lambda *a: None)
    for f in data.rglob("*.jpg"):  # into the page cache: no run pays the first disk read alone
        f.read_bytes()
    return data, folds


def config(args, data, folds, work, **extra):
    from pipeline.config import load_config

    over = [f"data={data}", f"folds_file={folds}", f"runs_dir={work / 'runs'}", f"backbone={args.backbone}",
            "pretrained=false", f"image_size={args.size}", f"batch_size={args.batch}", f"num_workers={args.workers}",
            "epochs=1", "fold=99", f"amp={str(args.amp).lower()}", f"image_cache_dir={work / 'cache'}",
            "lr=0.01", "deterministic=false"]  # fold 99: none, so no validation; deterministic off as in timm
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_config("default", over)


def ours(cfg):
    """images/s of one epoch of our training loop (its own metrics.csv figure: the epoch's batches only)."""
    import pandas as pd

    from pipeline.training.loop import train

    with contextlib.redirect_stdout(io.StringIO()):
        out = train(cfg)
    return float(pd.read_csv(out / "metrics.csv")["images_per_sec"].iloc[-1])


def reference(cfg, device, n_images):
    """images/s of a loop fed by timm's loader, over the same number of images as our epoch."""
    import numpy as np
    import torch
    from timm.data import create_dataset, create_loader

    from pipeline.core.device import autocast
    from pipeline.model import heads
    from pipeline.model.backbone import input_config
    from pipeline.model.embedder import build_model
    from pipeline.training.optimizers import make_optimizer

    torch.manual_seed(0)
    ds = create_dataset("", root=str(Path(cfg["data"]) / "train_images"))
    n_classes = len(ds.reader.class_to_idx)
    model, _ = build_model(cfg, with_weights=False)
    size, mean, std = input_config(cfg, model.backbone)
    sizes = np.bincount([t for _, t in ds.reader.samples], minlength=n_classes).tolist()
    head = heads.build_head(cfg, n_classes, sizes)
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device, memory_format=fmt), head.to(device)
    step = heads.LossStep(model, head)
    opt = make_optimizer(cfg, model, head)
    from pipeline.data.images import default_workers

    workers = default_workers() if cfg["num_workers"] < 0 else cfg["num_workers"]
    t0 = time.time()
    # timm's prefetcher normalises the uint8 batch on the device, so the model gets floats: the same work as ours
    dl = create_loader(ds, input_size=(3, size, size), batch_size=cfg["batch_size"], is_training=True,
                       scale=(cfg["crop_scale_min"], 1.0), hflip=0.5, color_jitter=0.1, mean=mean, std=std,
                       num_workers=workers, device=torch.device(device), use_prefetcher=True,
                       pin_memory=device == "cuda", persistent_workers=False)
    model.train(), head.train()
    seen, batches = 0, n_images // cfg["batch_size"]
    # the same mixed precision as our loop: fp16 autocast and a GradScaler on CUDA, fp32 on the CPU
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] and device == "cuda")
    for i, (x, y) in enumerate(dl):
        if i == batches:
            break
        with autocast(device, cfg["amp"]):
            loss = step(x.contiguous(memory_format=fmt), y)
        scaler.scale(loss).backward()
        scaler.step(opt), scaler.update(), opt.zero_grad(set_to_none=True)
        loss.item()
        seen += len(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.time() - t0)


def cache_formats(cfg, items, side):
    """Reading the cache back in one process: img/s and bytes per image of each format."""
    from pipeline.data.image_cache import FORMATS, CacheSpec, ImageReader, build_cache

    out = {}
    for fmt in FORMATS:
        spec = CacheSpec(side, fmt)
        with contextlib.redirect_stdout(io.StringIO()):
            build_cache({"train": items}, spec, cfg["image_cache_dir"])
        reader = ImageReader(side, spec.folder(cfg["image_cache_dir"]), fmt)
        reader(items[0])
        t = time.time()
        for it in items:
            reader(it)
        size = sum(f.stat().st_size for f in spec.folder(cfg["image_cache_dir"]).rglob("*") if f.is_file())
        out[fmt] = {"read_img_per_s": round(len(items) / (time.time() - t)), "bytes_per_image": size // len(items)}
    return out


def measure(args, name, hotels, photo_size, work):
    """One dataset: the reference and our three ways, interleaved --repeats times (the best of each: a shared
    machine only ever slows a run down), then the cache formats' read speed."""
    from pipeline.data.folds import split
    from pipeline.data.image_cache import CacheSpec, build_cache, short_side

    data, folds = bench_data(name, hotels, photo_size, work)
    base = config(args, data, folds, work)
    _, items, _, _ = split(base)
    n = len(items) // args.batch * args.batch
    scaled = dict(image_scale=1.5)
    side = short_side({"image_scale": 1.5}, args.size)
    with contextlib.redirect_stdout(io.StringIO()):
        build_cache({"train": items}, CacheSpec(side), base["image_cache_dir"])  # built ahead: not in the timing
    runs = {"reference": lambda: reference(base, args.device, n)}
    for key, extra in (("ours_full_decode", {}), ("ours_reduced_decode", scaled),
                       ("ours_cached", {**scaled, "image_cache": "true"})):
        runs[key] = lambda extra=extra: ours(config(args, data, folds, work, **extra))
    best = best_of(runs, args.repeats)
    row = {"images": n, "short_side": side, "reference_img_s": round(best["reference"], 1)}
    for key in list(runs)[1:]:
        row[f"{key}_img_s"] = round(best[key], 1)
        row[f"{key}_ratio"] = round(best[key] / best["reference"], 3)
    row["cache_formats"] = cache_formats(dict(base, image_cache_dir=str(work / f"formats-{name}")), items[:400], side)
    return row


def arguments(doc, repeats):
    """The flags both speed benches take."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="mixed precision as our amp=true (CUDA only)")
    p.add_argument("--quick", action="store_true", help="30 hotels per dataset (~250 images), one repeat: a smoke run")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=32, help="training batch")
    p.add_argument("--workers", type=int, default=-1, help="loader workers (-1: one per CPU, at most 8)")
    p.add_argument("--repeats", type=int, default=repeats, help="interleaved repeats; the best of each is kept")
    return p


def best_of(runs, repeats):
    """{name: the best img/s of its run} over interleaved repeats: a shared machine only ever slows a run down."""
    best = {key: 0.0 for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            best[key] = max(best[key], fn())
    return best


def main():
    args = arguments(__doc__, repeats=2).parse_args()
    if args.quick:
        args.repeats = 1
    if args.device == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    import torch

    from pipeline.data.images import default_workers

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"device": args.device, "amp": args.amp, "backbone": args.backbone, "image_size": args.size,
                  "batch_size": args.batch, "workers": default_workers() if args.workers < 0 else args.workers,
                  "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                  "repeats": args.repeats,
                  "demo": measure(args, "demo", 30 if args.quick else 120, 0, work),
                  "photos_1024": measure(args, "photos1024", 30 if args.quick else 80, 1024, work)}
    d, ph = result["demo"], result["photos_1024"]
    result["goals"] = {"uncached_vs_reference_ge_1.0": min(d["ours_full_decode_ratio"], ph["ours_full_decode_ratio"]),
                       "cached_1024_vs_reference_ge_1.5": ph["ours_cached_ratio"]}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
