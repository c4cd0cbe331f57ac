"""Inference throughput of seed 001's five backbones (SPEC §3) on this device, beside the seed's RTX 3090 figures.

Each backbone is the real timm architecture (timm.create_model(name, pretrained=False, num_classes=0): random
weights, pooled features, no network) run in eval mode under torch.inference_mode on random images of --size px
(224: the seed's size), channels_last for convolutional nets (more than one Conv2d: ViT, Swin and ResMLP have only
their patch embedding). Per backbone and precision: warm-up iterations, one timed iteration to size the run, then as
many iterations as fill --seconds, timed between torch.cuda.synchronize calls. ratio = ours / the seed's 3090 img/s.

Precision: CUDA runs fp16 autocast (the headline figure) and fp32; the CPU runs fp32. The seed does not say which it
used; its figures are 0.50-0.56x timm's published RTX 3090 AMP table (batch 256) for the three backbones the table
has at 224 px (ViT-B/8 170, Swin-B 616, ResMLP-36 1,423 img/s), which suggests fp32 or a small batch.

usage: python bench/backbones.py [--device auto|cpu|cuda] [--seconds 5] [--batch N] [--size 224]
                                 [--backbones a,b] [--precision fp16,fp32] [--warmup N]   -> JSON on stdout
--batch defaults to 64 on CUDA and 1 on the CPU (ViT-B/8 at 224 px takes seconds per image on 2 cores)."""
import argparse
import json
import math
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"  # random weights: nothing may reach the hub, even for a config

# images/s at 224 px on an RTX 3090 (seed 001, SPEC §3)
SEED_3090_IMG_S = {"tf_efficientnet_b5": 526, "tf_efficientnetv2_m": 470, "vit_base_patch8_224": 95,
                   "swin_base_patch4_window7_224": 335, "resmlp_36_distilled_224": 714}
PRECISIONS = ("fp32", "fp16", "bf16")


def create(name, size):
    """The timm architecture with random weights and no classifier, built for size px where it has a fixed size."""
    import timm

    try:  # ViT, Swin and ResMLP fix their input size at construction
        return timm.create_model(name, pretrained=False, num_classes=0, img_size=size)
    except TypeError:  # convnets take any size and have no img_size argument
        return timm.create_model(name, pretrained=False, num_classes=0)


def is_conv_net(model):
    import torch

    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def throughput(model, x, precision, seconds, warmup):
    """(images/s, timed iterations, timed seconds) of model(x) under precision's autocast, about seconds long."""
    import torch

    device = x.device.type
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        for _ in range(warmup):
            model(x)
        sync()
        # in chunks sized to fill what is left at the rate so far: one sync per chunk, not per batch, so the host
        # queues the next batch while the device runs this one, and a slowed-down machine still stops near seconds
        n, chunk, t = 0, 1, time.perf_counter()
        while True:
            for _ in range(chunk):
                model(x)
            sync()
            n, elapsed = n + chunk, time.perf_counter() - t
            if elapsed >= seconds:
                break
            chunk = max(1, min(2 * n, math.ceil((seconds - elapsed) * n / elapsed)))
    return len(x) * n / elapsed, n, elapsed


def measure(name, device, batch, size, precisions, seconds, warmup):
    """One backbone's entry of the JSON: params, memory format, batch, and img/s and ratio per precision (the
    first precision's as img_s / ratio, the others' as img_s_<p> / ratio_<p>)."""
    import torch

    torch.manual_seed(0)
    model = create(name, size).eval()
    conv = is_conv_net(model)
    fmt = torch.channels_last if conv else torch.contiguous_format
    model.to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    seed = SEED_3090_IMG_S.get(name) if size == 224 else None
    row = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
           "memory_format": "channels_last" if conv else "contiguous", "batch": batch, "seed_3090_img_s": seed}
    for i, precision in enumerate(precisions):
        img_s, n, elapsed = throughput(model, x, precision, seconds, warmup)
        suffix = "" if i == 0 else f"_{precision}"
        row[f"img_s{suffix}"] = float(f"{img_s:.4g}")  # significant digits: a CPU's ratios are ~1e-3
        row[f"ratio{suffix}"] = float(f"{img_s / seed:.3g}") if seed else None
        row[f"iterations{suffix}"], row[f"timed_s{suffix}"] = n, round(elapsed, 3)
    del model, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per backbone and precision (default 5)")
    p.add_argument("--batch", type=int, help="images per forward (default 64 on CUDA, 1 on the CPU)")
    p.add_argument("--size", type=int, default=224, help="image side in px (default 224; seed figures only at 224)")
    p.add_argument("--backbones", default=",".join(SEED_3090_IMG_S), help="comma-separated timm names")
    p.add_argument("--precision", help="comma-separated, first = headline (default fp16,fp32 on CUDA, fp32 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed iterations first (default 3 on CUDA, 1 on the CPU)")
    return p


def main(argv=None):
    args = arguments().parse_args(argv)
    import timm
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda: no CUDA device is visible (use --device auto or cpu)")
    precisions = list(dict.fromkeys((args.precision or ("fp16,fp32" if cuda else "fp32")).split(",")))
    if bad := [p for p in precisions if p not in PRECISIONS]:
        sys.exit(f"error: --precision {','.join(bad)}: expected a comma-separated list of {', '.join(PRECISIONS)}")
    if args.seconds <= 0 or (args.batch or 1) < 1 or args.size < 16:
        sys.exit("error: --seconds must be > 0, --batch >= 1 and --size >= 16")
    batch = args.batch or (64 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if cuda:
        torch.backends.cudnn.benchmark = True  # one fixed input shape: let cuDNN pick its fastest kernels, as timm's
    t0 = time.time()
    result = {"device": device, "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
              "timm": timm.__version__, "torch_threads": torch.get_num_threads(), "size": args.size,
              "precision": precisions[0], "precisions": precisions, "warmup": warmup, "seconds_per_run": args.seconds,
              "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
              if cuda else None, "backbones": {}}
    for name in args.backbones.split(","):
        print(f"backbones: {name}", file=sys.stderr, flush=True)
        try:
            result["backbones"][name] = measure(name, device, batch, args.size, precisions, args.seconds, warmup)
        except Exception as e:  # one backbone's failure (out of memory, unknown name) must not cost the others'
            result["backbones"][name] = {"error": f"{type(e).__name__}: {e}"}
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
