"""Training throughput, side by side in one run: our training loop (pipeline.training.loop.train, one epoch, no
validation) against a reference, interleaved --repeats times (the best of each kept: a shared machine only ever
slows a run down).

--reference timm-train (default): timm's own training script (pytorch-image-models train.py; found at
../shared/reference/timm_train.py from the repository root, or $TIMM_TRAIN_PY, or --timm-train PATH), run unchanged
as a subprocess of this Python on the same images (train_images/<hotel>/<photo>.jpg is an ImageFolder:
--data-dir <data> --train-split train_images; --val-split '' builds no validation), the same backbone, image size,
batch, optimiser (plain SGD: its --opt momentum, same lr, momentum and weight decay; its `sgd` is Nesterov),
workers, channels_last, pretrained off, one epoch, --warmup-epochs 0 and its default augmentation otherwise
(PIL decode, RandomResizedCrop 0.08-1 with random interpolation, hflip, colour jitter 0.4, label smoothing 0.1).
On the CPU --no-prefetcher (its workers normalise to float32); on CUDA its prefetcher, --pin-mem and --amp with
our amp_dtype rule. Its figure: the avg img/s of its last `Train:` line. Its meter times each update from the end
of the previous one (the first from before the loader's workers start), so data waiting is included, and every
batch is full (drop_last): that figure is the epoch's images / the epoch's wall time, the measure our loop's
metrics.csv gives (seen / seconds from before its loader starts). If train.py is missing, one line on stderr and
the JSON say so, and the loop reference runs instead.
Ours against it is configured as close to its model as our registries allow ("matched": neck=linear,
embedding_dim = the backbone's feature width, the arcface head, augmentations off: aug_p_color = aug_p_affine =
aug_p_dropout = mask_p = 0, crop_scale_min 0.08 as timm's), then rows each put back one difference, at full
decode: our default neck (mlp, 4,096-d), our SPEC augmentations (and crop_scale_min 0.6), all our defaults
(both; arcface is our default head already, so no row puts a head back), and compile=true (the torch.compile
calls the loop made are counted: 0 means the key had no effect).

--reference loop: a loop of ours fed by timm's data pipeline (timm.data.create_dataset + create_loader with its
prefetcher: uint8 batches normalised on the device), training our default model (our embedder and ArcFace
head), optimiser (SGD), batch, image size, worker count and memory format (channels_last); ours at our defaults.

Datasets: (a) the demo images (320x240 rooms, 128-192 px photos), (b) 1024-px JPEGs (make-data --photo-size 1024).
Ours runs three ways: full-size decoding as the reference does (image_scale=0), reduced decoding (image_scale=1.5:
large JPEGs decoded at 1/2-1/8 scale), and the image cache (image_cache=true, memmap, built before timing). Also
measured: reading the cache back, memmap against jpeg, img/s in one process, and bytes per image.

Goals (issue 14): ours >= 1.0x the reference uncached (demo and 1024 px); >= 1.5x with the cache on 1024-px photos.

usage: python bench/train_speed.py [--reference timm-train|loop] [--timm-train PATH] [--device cpu|cuda] [--amp]
                                   [--quick] [--repeats 2]   -> JSON on stdout"""
import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

TIMM_TRAIN = ROOT.parent / "shared" / "reference" / "timm_train.py"  # the default place of timm's train.py
# its per-update line: "Train: 0 [   8/9 (100%)]  Loss: ...  Time: 3.131s,   10.22/s  (5.465s,    5.86/s)  LR: ..."
TRAIN_LINE = re.compile(r"Train: \d+ \[\s*(\d+)/(\d+) .*?Time: [\d.]+s,\s+[\d.]+/s\s+\(([\d.]+)s,\s+([\d.]+)/s\)")
SPEC_AUGS = {"aug_p_color": 0.5, "aug_p_affine": 0.3, "aug_p_dropout": 0.5, "mask_p": 1.0, "crop_scale_min": 0.6}


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
            "epochs=1", "fold=-1", f"amp={str(args.amp).lower()}", f"image_cache_dir={work / 'cache'}",
            "lr=0.01", "deterministic=false"]  # fold -1: no validation; deterministic off as in timm
    over += [f"{k}={v}" for k, v in extra.items()]
    return load_config("default", over)


def matched(backbone):
    """Our config keys closest to timm train.py's model and data: a linear neck to the backbone's own feature
    width, the arcface head (a cosine classifier), no augmentation but the crop, timm's crop scale."""
    import timm

    width = timm.create_model(backbone, pretrained=False, num_classes=0).num_features
    return {"neck": "linear", "embedding_dim": width, "head": "arcface", "aug_p_color": 0, "aug_p_affine": 0,
            "aug_p_dropout": 0, "mask_p": 0, "crop_scale_min": 0.08}


@contextlib.contextmanager
def counting_compile():
    """torch.compile wrapped to count its calls (Module.compile calls it too): did compile=true do anything?"""
    import torch

    real, calls = torch.compile, []

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    torch.compile = counted
    try:
        yield calls
    finally:
        torch.compile = real


def ours(cfg, notes=None):
    """images/s of one epoch of our training loop (its own metrics.csv figure: the epoch's batches only);
    notes (a dict), when given, gets the torch.compile calls the loop made."""
    import pandas as pd

    from pipeline.training.loop import train

    with contextlib.redirect_stdout(io.StringIO()), counting_compile() as calls:
        out = train(cfg)
    if notes is not None:
        notes["torch_compile_calls"] = len(calls)
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


def timm_train_path(args):
    """(path of timm's train.py, found): --timm-train, else $TIMM_TRAIN_PY, else ../shared/reference/."""
    path = Path(args.timm_train or os.environ.get("TIMM_TRAIN_PY") or TIMM_TRAIN)
    return path, path.is_file()


def timm_command(args, script, data, work):
    """timm train.py's command line: our bench's settings in its flags (module docstring)."""
    classes = sum(1 for d in (Path(data) / "train_images").iterdir() if d.is_dir())
    cmd = [sys.executable, str(script), "--data-dir", str(data), "--train-split", "train_images", "--val-split", "",
           "--model", args.backbone, "--num-classes", str(classes), "--img-size", str(args.size),
           "-b", str(args.batch), "--opt", "momentum", "--lr", "0.01", "--momentum", "0.9", "--weight-decay", "0.0005",
           "--warmup-epochs", "0", "--epochs", "1", "-j", str(workers(args)), "--channels-last", "--seed", "42",
           "--log-interval", "1", "--output", str(work / "timm-out"), "--device", args.device]
    if args.device == "cpu":
        cmd.append("--no-prefetcher")
    else:
        cmd.append("--pin-mem")
        if args.amp:
            import torch

            bf16 = torch.cuda.get_device_capability() >= (8, 0)  # our amp_dtype auto: bfloat16 from sm_80
            cmd += ["--amp", "--amp-dtype", "bfloat16" if bf16 else "float16"]
    return cmd


def timm_train(cmd, work, notes):
    """images/s of one run of timm's train.py: the avg img/s of its last Train: line (module docstring);
    notes gets its images and updates."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [m for m in map(TRAIN_LINE.search, done.stdout.splitlines()) if m]
    if done.returncode or not lines:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise RuntimeError(f"timm train.py failed (exit {done.returncode}, {len(lines)} Train: lines):\n{tail}")
    updates, img_s = int(lines[-1].group(2)), float(lines[-1].group(4))
    images = updates * int(cmd[cmd.index("-b") + 1])  # drop_last: every update a full batch
    notes.update(updates=updates, images=images, epoch_seconds=round(images / img_s, 2))
    return img_s


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


def our_rows(args):
    """{row name: config overrides} of our runs against the chosen reference (module docstring)."""
    scaled, base, extras = {"image_scale": 1.5}, {}, {}  # the loop reference: our defaults
    if args.reference == "timm-train":  # matched, then one difference put back per row, at full decode
        base = matched(args.backbone)
        extras = {"ours_mlp_neck_4096": {**base, "neck": "mlp", "embedding_dim": 4096},
                  "ours_spec_augs": {**base, **SPEC_AUGS}, "ours_defaults": {},
                  "ours_compile": {**base, "compile": "true"}}
    return {"ours_full_decode": base, "ours_reduced_decode": {**base, **scaled},
            "ours_cached": {**base, **scaled, "image_cache": "true"}, **extras}


def measure(args, name, hotels, photo_size, work):
    """One dataset: the reference and our rows, interleaved --repeats times (the best of each), then the cache
    formats' read speed."""
    from pipeline.data.folds import split
    from pipeline.data.image_cache import CacheSpec, build_cache, short_side

    data, folds = bench_data(name, hotels, photo_size, work)
    base = config(args, data, folds, work)
    _, items, _, _ = split(base)
    n = len(items) // args.batch * args.batch
    side = short_side({"image_scale": 1.5}, args.size)
    with contextlib.redirect_stdout(io.StringIO()):
        build_cache({"train": items}, CacheSpec(side), base["image_cache_dir"])  # built ahead: not in the timing
    notes = {}
    if args.reference == "timm-train":
        cmd = timm_command(args, args.timm_train_path, data, work)
        runs = {"reference": lambda: timm_train(cmd, work, notes.setdefault("reference", {}))}
    else:
        runs = {"reference": lambda: reference(base, args.device, n)}
    for key, extra in our_rows(args).items():
        runs[key] = lambda extra=extra, key=key: ours(config(args, data, folds, work, **extra),
                                                      notes.setdefault(key, {}))
    best = best_of(runs, args.repeats)
    row = {"images": n, "short_side": side, "reference_img_s": round(best["reference"], 1)}
    if "reference" in notes:
        row["reference_images"] = notes["reference"]["images"]  # timm's ImageFolder: all of train_images
        row["reference_epoch_seconds"] = notes["reference"]["epoch_seconds"]
    for key in list(runs)[1:]:
        row[f"{key}_img_s"] = round(best[key], 1)
        row[f"{key}_ratio"] = round(best[key] / best["reference"], 3)
    if "ours_compile" in notes:
        row["ours_compile_torch_compile_calls"] = notes["ours_compile"]["torch_compile_calls"]
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


def workers(args):
    from pipeline.data.images import default_workers

    return default_workers() if args.workers < 0 else args.workers


def best_of(runs, repeats):
    """{name: the best img/s of its run} over interleaved repeats: a shared machine only ever slows a run down."""
    best = {key: 0.0 for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            best[key] = max(best[key], fn())
    return best


def pick_reference(args):
    """The reference to run and its JSON: timm-train, or the loop when timm's train.py is missing (said once)."""
    info = {"name": args.reference}
    if args.reference == "timm-train":
        args.timm_train_path, found = timm_train_path(args)
        info.update(path=str(args.timm_train_path), found=found)
        if not found:
            print(f"train_speed: timm train.py not found at {args.timm_train_path} (--timm-train PATH or "
                  "$TIMM_TRAIN_PY): measuring against --reference loop instead", file=sys.stderr)
            args.reference = info["name"] = "loop"
            info.update(requested="timm-train", note="timm train.py missing: the loop reference ran instead")
        else:
            info["figure"] = ("avg img/s of its last Train: line = the epoch's images / its wall time (update "
                              "times include data waiting, the first from before the workers start; full batches)")
            info["matched_config"] = matched(args.backbone)
    return info


def goals(result):
    """The goals' ratios; against timm train.py also the compile row's and a ceiling for the cached one."""
    d, ph = result["demo"], result["photos_1024"]
    out = {"uncached_vs_reference_ge_1.0": min(d["ours_full_decode_ratio"], ph["ours_full_decode_ratio"]),
           "cached_1024_vs_reference_ge_1.5": ph["ours_cached_ratio"]}
    if "ours_compile_ratio" in ph:  # no goal: what compile=true gives, its compile time inside the one epoch
        out["compile_vs_reference"] = {"demo": d["ours_compile_ratio"], "photos_1024": ph["ours_compile_ratio"]}
        calls = d["ours_compile_torch_compile_calls"] + ph["ours_compile_torch_compile_calls"]
        out["compile_note"] = ("compile time (the first batches') is inside the epoch's img/s" if calls else
                               "compile=true made no torch.compile call: the key had no effect in the loop")
        # a loop whose data cost nothing, computing as fast as the reference, reaches about this on 1024 px
        out["cached_1024_ceiling_estimate"] = round(d["reference_img_s"] / ph["reference_img_s"], 3)
    return out


def main():
    p = arguments(__doc__, repeats=2)
    p.add_argument("--reference", default="timm-train", choices=["timm-train", "loop"],
                   help="timm-train: timm's train.py as a subprocess (default); loop: our loop on timm's loader")
    p.add_argument("--timm-train", default="",
                   help=f"path of timm's train.py (default: $TIMM_TRAIN_PY, else {TIMM_TRAIN})")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    if args.device == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    import torch

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"device": args.device, "amp": args.amp, "backbone": args.backbone, "image_size": args.size,
                  "batch_size": args.batch, "workers": workers(args), "torch_threads": torch.get_num_threads(),
                  "cpus": os.cpu_count(), "repeats": args.repeats, "reference": pick_reference(args)}
        result["demo"] = measure(args, "demo", 30 if args.quick else 120, 0, work)
        result["photos_1024"] = measure(args, "photos1024", 30 if args.quick else 80, 1024, work)
    result["goals"] = goals(result)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
