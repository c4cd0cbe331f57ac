"""decode=cpu against decode=gpu (issue 25, pipeline/data/decode.py), side by side in one run, on two synthetic
datasets: the demo's (make-data, 128-192 px photos; --hotels, 250 as the demo) and 1024-px JPEGs (make-data
--photo-size 1024; --photo-hotels). Per dataset:

  decode_img_s     the loader alone, uint8 (B, 3, S, S) batches on the device: decode=cpu (workers decode and resize
                   with cv2) vs decode=gpu (workers read bytes, the batch is decoded and resized on --device; on a CPU
                   that is torchvision's decoder in the main process)
  embed_img_s      pipeline.retrieval.forward.embed_items over the gallery (train) images each way
  pixels           max and mean |difference| of the two ways' uint8 batches (first --pixel-images images)
  embeddings       min and mean cosine, max |difference| of the two ways' L2-normalised float16 rows
  map5             MAP@5 each way of the test photos (test_truth.csv) against the train gallery: the demo only

The model: --run (a run folder: its best.pt), else --backbone with random weights (pretrained=false: nothing needs
the network), so MAP@5 without --run is a random model's; both ways rank with the same one. Timings are the best of
--repeats interleaved repeats (a shared machine only ever slows a run down).

usage: python bench/decode_speed.py [--device cpu|cuda] [--amp] [--quick] [--size 96] [--run runs/x/fold0]
       -> JSON on stdout"""
import argparse
import contextlib
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

from train_speed import bench_data, best_of  # noqa: E402  (the training bench's data folders, reused)


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", action="store_true", help="mixed precision as our amp=true (CUDA only)")
    p.add_argument("--quick", action="store_true", help="at most 30 hotels in the demo data, 10 of 1024-px, one repeat")
    p.add_argument("--hotels", type=int, default=250, help="hotels of the demo-sized data (default 250, the demo's)")
    p.add_argument("--photo-hotels", type=int, default=30, help="hotels of the 1024-px data (0: skip it)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=96, help="model input side (default 96, demo_lite0's)")
    p.add_argument("--eval-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=-1, help="loader workers (-1: one per CPU, at most 8)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pixel-images", type=int, default=256)
    p.add_argument("--run", default="", help="a trained run folder (its best.pt) instead of a random model")
    return p


def sync(device):
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def batches(items, cfg, device, decode):
    """The uint8 batches on the device, as embed_items makes them, each way."""
    from pipeline.data import decode as dec
    from pipeline.data.dataset import ImageDataset, loader
    from pipeline.data.transforms import build_transform

    tfm, size = build_transform("test", cfg, cfg["image_size"]), cfg["eval_batch_size"]
    gpu = dec.plan({**cfg, "decode": decode}, tfm, None, device)
    ds = gpu.dataset(items) if gpu else ImageDataset(items, tfm)
    index = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
    for x, _ in loader(ds, index, cfg["num_workers"], device, dec.collate if gpu else None):
        yield gpu.batch(x) if gpu else x.to(device, non_blocking=True)


def decode_rate(items, cfg, device, decode):
    t = time.perf_counter()
    for _ in batches(items, cfg, device, decode):
        pass
    sync(device)
    return len(items) / (time.perf_counter() - t)


def pixels(items, cfg, device):
    import torch

    a, b = (torch.cat([x.cpu() for x in batches(items, cfg, device, d)]) for d in ("cpu", "gpu"))
    d = (a.int() - b.int()).abs().float()
    return {"images": len(items), "max_abs_diff": d.max().item(), "mean_abs_diff": round(d.mean().item(), 4),
            "share_differing": round((d > 0).float().mean().item(), 4)}


def embed(model, items, cfg, device, decode):
    from pipeline.data.transforms import build_transform
    from pipeline.retrieval.forward import embed_items

    tfm = build_transform("test", cfg, cfg["image_size"])
    return embed_items(model, items, tfm, {**cfg, "decode": decode}, device)[0]


def embed_rate(model, items, cfg, device, decode, out):
    t = time.perf_counter()
    out[decode] = embed(model, items, cfg, device, decode)
    return len(items) / (time.perf_counter() - t)


def compare(a, b):
    import numpy as np

    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"rows": len(a), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(a - b).max())}


def map5_each(model, ds, gallery, rows, cfg, device):
    """MAP@5 of the test photos (test_truth.csv) against the gallery rows, each way."""
    import pandas as pd

    from pipeline.inference.predict import map5
    from pipeline.retrieval.embeddings import EmbeddingSet, item_set

    truth = pd.read_csv(Path(cfg["data"]) / "test_truth.csv", dtype=str)
    label = dict(zip(truth.iloc[:, 0], truth.iloc[:, 1]))
    by_name = {it.path.name: it for it in ds.test}
    queries = [by_name[n] for n in label if n in by_name]
    classes = sorted({it.label for it in gallery})
    out = {"queries": len(queries), "gallery": len(gallery)}
    for decode in ("cpu", "gpu"):
        q = embed(model, queries, cfg, device, decode)
        qs = EmbeddingSet([q], [it.image_id for it in queries], [label[it.path.name] for it in queries])
        out[decode] = round(map5(qs, item_set(rows[decode], gallery), classes, log=lambda *a: None), 4)
    return out


def model_for(args, cfg):
    import torch

    from pipeline.model.embedder import build_model

    if args.run:
        from pipeline.retrieval.embeddings import load_model

        state = torch.load(Path(args.run) / "best.pt", weights_only=True, map_location="cpu")
        cfg["image_size"] = state["image_size"]
        return load_model(state["config"], state["model"], cfg, args.device, state["image_size"]).eval()
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    return model.to(args.device, memory_format=torch.channels_last).eval()


def measure(args, name, hotels, photo_size, work):
    from pipeline.config import load_config
    from pipeline.data.layouts import load_dataset

    data, _ = bench_data(name, hotels, photo_size, work)
    cfg = load_config("default", [f"data={data}", f"backbone={args.backbone}", "pretrained=false",
                                  f"image_size={args.size}", f"eval_batch_size={args.eval_batch}",
                                  f"num_workers={args.workers}", f"amp={str(args.amp).lower()}",
                                  "channels_last=true"])
    model = model_for(args, cfg)
    ds = load_dataset(data, cfg)
    items = ds.train
    embed(model, items[:cfg["eval_batch_size"]], cfg, args.device, "gpu")  # warm-up: kernels, the decoder
    rows = {}
    runs = {f"decode_{d}": (lambda d=d: decode_rate(items, cfg, args.device, d)) for d in ("cpu", "gpu")}
    runs.update({f"embed_{d}": (lambda d=d: embed_rate(model, items, cfg, args.device, d, rows))
                 for d in ("cpu", "gpu")})
    best = best_of(runs, args.repeats)
    out = {"data": str(data), "images": len(items), "image_size": cfg["image_size"],
           "decode_img_s": {d: round(best[f"decode_{d}"], 1) for d in ("cpu", "gpu")},
           "embed_img_s": {d: round(best[f"embed_{d}"], 1) for d in ("cpu", "gpu")},
           "pixels": pixels(items[:args.pixel_images], cfg, args.device),
           "embeddings": compare(rows["cpu"], rows["gpu"])}
    if (Path(data) / "test_truth.csv").is_file() and not photo_size:
        out["map5"] = map5_each(model, ds, items, rows, cfg, args.device)
    return out


def main(argv=None):
    args = arguments().parse_args(argv)
    import torch

    from pipeline.data.images import default_workers

    if args.quick:
        args.hotels, args.photo_hotels, args.repeats = min(args.hotels, 30), min(args.photo_hotels, 10), 1
    t0 = time.time()
    result = {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
              "amp": args.amp, "backbone": args.backbone, "model": args.run or "random weights (pretrained=false)",
              "eval_batch_size": args.eval_batch,
              "workers": default_workers() if args.workers < 0 else args.workers,
              "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "torch": torch.__version__}
    import torchvision

    result["torchvision"] = torchvision.__version__
    # the pipeline's lines (decode=gpu's notes) go to stderr: stdout is the JSON
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        work = Path(tmp)
        result["demo"] = measure(args, "demo", args.hotels, 0, work)
        if args.photo_hotels:
            result["photos_1024"] = measure(args, "photos1024", args.photo_hotels, 1024, work)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
