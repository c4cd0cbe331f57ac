"""Embedding throughput, side by side in one run: our embedding (pipeline.retrieval.forward.embed_items: loader
workers reading and resizing the images, uint8 batches normalised on the device, L2-normalised float16 rows) against
a bare forward pass of the same model over the same images already in memory, in the same batches (no reading, no
resizing, no copies).

The bare forward is the model's own forward on its own input: uint8 (n, 3, S, S) channels_last tensors, so
PixelNorm (model/embedder.py: the model's first step, the lookup that normalises uint8 on the device) is in both
it and ours, and the ratio is what reading, resizing, collating, the workers and the output rows cost. The
forward on inputs normalised beforehand (float32, PixelNorm skipped) is reported beside it (bare_forward_float),
so PixelNorm's own cost stays visible.

Ours runs on 1024-px JPEGs (make-data --photo-size 1024) three ways: full-size decoding (image_scale=0), reduced
decoding (image_scale=1.5) and the image cache (image_cache=true, memmap, built before timing); from the cache also
with 0 and 1 loader workers (on few cores the workers share them with the model's threads).

--breakdown instead prints where the time of an embedding from the cache goes, each part measured alone in this
process (torch on --breakdown-threads threads, 1 by default: CPU milliseconds per image that a busy machine barely
distorts and that add up): reading the cache, the resize, a dataset item, collate, the loader alone (its workers'
CPU counted once they are joined) and its first batch, the channels_last copy, PixelNorm, the model on uint8 and on
float input, the backbone alone, the output rows (normalise, .cpu(), float16), and embed_items with 0, 1, 2 workers.

Goal (issue 14): ours >= 0.95x the bare forward with the cache.

usage: python bench/embed_speed.py [--device cpu|cuda] [--amp] [--quick] [--breakdown]   -> JSON on stdout"""
import contextlib
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from train_speed import arguments, bench_data, best_of, config, workers  # noqa: E402  (the training bench's data and config)


def in_memory(model, items, cfg):
    """The items as the model's input, made beforehand: (uint8, normalised float32), each (n, 3, S, S)
    channels_last on the model's device."""
    import numpy as np
    import torch

    from pipeline.data.image_cache import ImageReader
    from pipeline.data.transforms import apply, build_transform

    tfm, reader = build_transform("test", cfg, cfg["image_size"]), ImageReader()
    x = torch.from_numpy(np.stack([apply(tfm, reader(it), i) for i, it in enumerate(items)]))
    x = x.to(next(model.parameters()).device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return x, model.pixel_norm(x).contiguous(memory_format=torch.channels_last)


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


def setup(args, work):
    """((data folder, folds file), items, model on the device): the 1024-px photos, their cache built."""
    import torch

    from pipeline.data.folds import split
    from pipeline.data.image_cache import CacheSpec, build_cache, short_side
    from pipeline.model.embedder import build_model

    data, folds = bench_data("photos1024", 30 if args.quick else 150, 1024, work)
    base = config(args, data, folds, work, eval_batch_size=args.eval_batch)
    _, items, _, _ = split(base)
    model, _ = build_model(base, with_weights=False)
    model.to(args.device, memory_format=torch.channels_last).eval()
    side = short_side({"image_scale": 1.5}, args.size)
    with contextlib.redirect_stdout(io.StringIO()):
        build_cache({"train": items}, CacheSpec(side), base["image_cache_dir"])  # ahead: not in the timing
    return (data, folds), items, model


def speed(args, work):
    """The side-by-side run: bare forwards and our ways, interleaved, best of --repeats."""
    import torch

    (data, folds), items, model = setup(args, work)

    def cfg(**extra):
        return config(args, data, folds, work, eval_batch_size=args.eval_batch, **extra)

    base = cfg()
    x, xf = in_memory(model, items, base)
    runs = {"bare_forward": lambda: bare(model, x, args.eval_batch, args.device, args.amp),
            "bare_forward_float": lambda: bare(model, xf, args.eval_batch, args.device, args.amp)}
    cached = {"image_scale": 1.5, "image_cache": "true"}
    for key, extra in (("ours_full_decode", {}), ("ours_reduced_decode", {"image_scale": 1.5}),
                       ("ours_cached", cached), ("ours_cached_workers_0", {**cached, "num_workers": 0}),
                       ("ours_cached_workers_1", {**cached, "num_workers": 1})):
        runs[key] = lambda c=cfg(**extra): ours(model, items, c, args.device)
    best = best_of(runs, args.repeats)
    result = {"device": args.device, "amp": args.amp, "backbone": args.backbone, "image_size": args.size,
              "eval_batch_size": args.eval_batch, "images": len(items), "torch_threads": torch.get_num_threads(),
              "workers": workers(args), "repeats": args.repeats}
    for key in runs:
        result[f"{key}_img_s"] = round(best[key], 1)
        if key != "bare_forward":
            result[f"{key}_ratio"] = round(best[key] / best["bare_forward"], 3)
    result["ours_cached_vs_bare_forward_float"] = round(best["ours_cached"] / best["bare_forward_float"], 3)
    result["goals"] = {"cached_vs_bare_forward_ge_0.95": result["ours_cached_ratio"]}
    return result


def _cpu_children():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # joined loader workers
    return r.ru_utime + r.ru_stime


def _timed(fn, repeats, n):
    """fn's best run: wall, this process's CPU and its joined children's CPU, in ms per image."""
    runs = []
    for _ in range(repeats):
        c, k, t = time.process_time(), _cpu_children(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t, time.process_time() - c, _cpu_children() - k))
    wall, cpu, kids = min(runs)
    return {"wall_ms": round(1000 * wall / n, 3), "cpu_ms": round(1000 * cpu / n, 3),
            "workers_cpu_ms": round(1000 * kids / n, 3)}


def _data_parts(items, cfg, batch):
    """{part: fn} of the data side, from the cache: each over all items."""
    from torch.utils.data import default_collate

    from pipeline.data.dataset import ImageDataset, loader
    from pipeline.data.image_cache import image_reader
    from pipeline.data.transforms import apply, build_transform

    reader, tfm = image_reader(cfg, cfg["image_size"]), build_transform("test", cfg, cfg["image_size"])
    ds, n = ImageDataset(items, tfm, None, reader), len(items)
    images, batches = [reader(it) for it in items], [list(range(i, min(i + batch, n))) for i in range(0, n, batch)]
    samples = [ds[i] for i in range(n)]
    parts = {"read_cache": lambda: [reader(it) for it in items],
             "resize": lambda: [apply(tfm, im, i) for i, im in enumerate(images)],
             "dataset_item (read + resize + tensor)": lambda: [ds[i] for i in range(n)],
             "collate": lambda: [default_collate([samples[i] for i in b]) for b in batches]}
    for w in (0, 1, 2):
        parts[f"loader_alone_workers_{w}"] = lambda w=w: [b for b in loader(ds, batches, num_workers=w)]
        parts[f"loader_first_batch_workers_{w}"] = lambda w=w: next(iter(loader(ds, batches, num_workers=w)))
    return parts, [default_collate([samples[i] for i in b])[0] for b in batches]


def _model_parts(model, xs):
    """{part: fn} of the device side, on the collated uint8 batches xs."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    fl = [model.pixel_norm(x).contiguous(memory_format=torch.channels_last) for x in cl]
    rows = [model(x).float() for x in fl]
    return {"channels_last_copy": lambda: [x.contiguous(memory_format=torch.channels_last) for x in xs],
            "pixel_norm": lambda: [model.pixel_norm(x) for x in cl],
            "model_on_uint8 (the bare forward)": lambda: [model(x).float() for x in cl],
            "model_on_float (PixelNorm skipped)": lambda: [model(x).float() for x in fl],
            "backbone_on_float (no neck)": lambda: [model.backbone(x) for x in fl],
            "output_rows (normalise, cpu, float16)":
                lambda: [F.normalize(e, dim=1).cpu().numpy().astype(np.float16) for e in rows]}


def breakdown(args, work):
    """Each part of an embedding from the cache alone, in ms per image (module docstring)."""
    import torch

    from pipeline.data.image_cache import image_reader
    from pipeline.data.transforms import build_transform
    from pipeline.retrieval.forward import embed_items

    torch.set_num_threads(args.breakdown_threads)
    (data, folds), items, model = setup(args, work)
    cfg = config(args, data, folds, work, eval_batch_size=args.eval_batch, image_scale=1.5, image_cache="true")
    parts, xs = _data_parts(items, cfg, args.eval_batch)
    tfm, reader = build_transform("test", cfg, args.size), image_reader(cfg, args.size)
    with torch.no_grad():
        model(xs[0]), model(xs[-1])  # warm-up of both batch shapes
        parts.update(_model_parts(model, xs))
        for w in (0, 1, 2):
            parts[f"embed_items_workers_{w}"] = lambda c=dict(cfg, num_workers=w): embed_items(
                model, items, tfm, c, args.device, reader=reader)
        table = {name: _timed(fn, args.repeats, len(items)) for name, fn in parts.items()}
    bare_ms = table["model_on_uint8 (the bare forward)"]["wall_ms"]
    for row in table.values():
        row["share_of_bare"] = round(row["wall_ms"] / bare_ms, 4)
    return {"device": args.device, "backbone": args.backbone, "image_size": args.size, "images": len(items),
            "eval_batch_size": args.eval_batch, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
            "ms_per_image": table}


def main():
    p = arguments(__doc__, repeats=3)
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--breakdown", action="store_true", help="where the time goes, part by part (docstring)")
    p.add_argument("--breakdown-threads", type=int, default=1, help="torch threads of --breakdown (default 1)")
    args = p.parse_args()
    if args.breakdown and args.device != "cpu":
        p.error("--breakdown measures the CPU's parts: use it with --device cpu")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = breakdown(args, Path(tmp)) if args.breakdown else speed(args, Path(tmp))
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
