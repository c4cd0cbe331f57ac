"""Embedding throughput, side by side in one run: our embedding (pipeline.retrieval.forward.embed_items: loader
workers reading and resizing the images, uint8 batches normalised on the device, L2-normalised float16 rows) against
a bare forward pass of the same model over the same images as normalised float tensors already in memory (no
reading, no resizing, no copies), in the same batches.

Ours runs on 1024-px JPEGs (make-data --photo-size 1024) three ways: full-size decoding (image_scale=0), reduced
decoding (image_scale=1.5) and the image cache (image_cache=true, memmap, built before timing).

Goal (issue 14): ours >= 0.95x the bare forward with the cache.

usage: python bench/embed_speed.py [--device cpu|cuda] [--amp] [--quick]   -> JSON on stdout"""
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
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from train_speed import arguments, bench_data, best_of, config  # noqa: E402  (the same bench data and config as the training bench)


def in_memory(model, items, cfg):
    """The items as the model's normalised float input, (n, 3, S, S) channels_last, made beforehand."""
    import numpy as np
    import torch

    from pipeline.data.image_cache import ImageReader
    from pipeline.data.transforms import apply, build_transform

    tfm, reader = build_transform("test", cfg, cfg["image_size"]), ImageReader()
    x = torch.from_numpy(np.stack([apply(tfm, reader(it), i) for i, it in enumerate(items)]))
    with torch.no_grad():
        return model.pixel_norm(x.to(next(model.parameters()).device)).contiguous(memory_format=torch.channels_last)


def bare(model, x, batch, device, amp):
    """images/s of model(x) over the in-memory batches of x, in the batches embed uses."""
    import torch

    from pipeline.core.device import autocast

    with torch.no_grad(), autocast(device, amp):
        model(x[:batch]), model(x[len(x) // batch * batch:])  # warm-up: both batch shapes pick their kernels
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        for i in range(0, len(x), batch):
            model(x[i:i + batch]).float()
        if device == "cuda":
            torch.cuda.synchronize()
    return len(x) / (time.time() - t)


def ours(model, items, cfg, device):
    """images/s of embed_items over the items (the test pipeline: resize to the model size), reader from cfg."""
    from pipeline.data.image_cache import image_reader
    from pipeline.data.transforms import build_transform
    from pipeline.retrieval.forward import embed_items

    size = cfg["image_size"]
    reader = image_reader(cfg, size)
    tfm = build_transform("test", cfg, size)
    embed_items(model, items[:cfg["eval_batch_size"]], tfm, cfg, device, reader=reader)  # warm-up, as bare's
    t = time.time()
    embed_items(model, items, tfm, cfg, device, reader=reader)
    return len(items) / (time.time() - t)


def main():
    p = arguments(__doc__, repeats=3)
    p.add_argument("--eval-batch", type=int, default=128)
    args = p.parse_args()
    import torch

    from pipeline.data.folds import split
    from pipeline.data.image_cache import CacheSpec, build_cache, short_side
    from pipeline.model.embedder import build_model

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, folds = bench_data("photos1024", 30 if args.quick else 150, 1024, work)
        base = config(args, data, folds, work, eval_batch_size=args.eval_batch)
        _, items, _, _ = split(base)
        model, _ = build_model(base, with_weights=False)
        model.to(args.device, memory_format=torch.channels_last).eval()
        side = short_side({"image_scale": 1.5}, args.size)
        with contextlib.redirect_stdout(io.StringIO()):
            build_cache({"train": items}, CacheSpec(side), base["image_cache_dir"])  # ahead: not in the timing
        x = in_memory(model, items, base)
        runs = {"bare_forward": lambda: bare(model, x, args.eval_batch, args.device, args.amp)}
        for key, extra in (("ours_full_decode", {}), ("ours_reduced_decode", {"image_scale": 1.5}),
                           ("ours_cached", {"image_scale": 1.5, "image_cache": "true"})):
            cfg = config(args, data, folds, work, eval_batch_size=args.eval_batch, **extra)
            runs[key] = lambda cfg=cfg: ours(model, items, cfg, args.device)
        best = best_of(runs, args.repeats)
        result = {"device": args.device, "amp": args.amp, "backbone": args.backbone, "image_size": args.size,
                  "eval_batch_size": args.eval_batch, "images": len(items), "torch_threads": torch.get_num_threads(),
                  "repeats": args.repeats, "bare_forward_img_s": round(best["bare_forward"], 1)}
        for key in list(runs)[1:]:
            result[f"{key}_img_s"] = round(best[key], 1)
            result[f"{key}_ratio"] = round(best[key] / best["bare_forward"], 3)
    result["goals"] = {"cached_vs_bare_forward_ge_0.95": result["ours_cached_ratio"]}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
