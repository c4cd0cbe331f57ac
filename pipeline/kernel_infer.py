"""Inference inside a Kaggle kernel: embed the test images with every packaged model and rank them against the
cached gallery embeddings with the same code as `./run.sh ensemble` (scoring.predict), then write and validate
submission.csv. Reads only the models dataset laid out by pipeline/kernel.py and the competition folder."""
import json
import time
from pathlib import Path

import numpy as np


def _tricks(saved):
    t = dict(saved)
    for k in ("qe", "dba"):  # JSON turned the (k, alpha) tuples into lists
        t[k] = tuple(t[k])
    return t


def run(models_dir, data_dir, out_csv, t0=None, log=print):
    """Writes out_csv; returns its validated rows. models_dir: the models dataset (kernel.json at its root)."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from . import scoring
    from .data.layouts import load_dataset
    from .embed import embed_with, load_model, split_transform
    from .inference import pick_device
    from .io import read_csv
    from .submission import write_submission

    t0 = time.time() if t0 is None else t0
    models_dir, data_dir = Path(models_dir), Path(data_dir)
    spec = json.loads((models_dir / "kernel.json").read_text())
    tricks = _tricks(spec["tricks"])
    device = pick_device()
    log(f"kernel: {len(spec['models'])} model(s) on {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "") + f"; tricks: {scoring.describe(tricks)}")
    queries, gallery, labels, ds, timings = [], [], None, None, {}
    for name in spec["models"]:
        t = time.time()
        mdir = models_dir / name
        cfg = yaml.safe_load((mdir / "config.yaml").read_text())
        train_cfg = yaml.safe_load((mdir / "train_config.yaml").read_text())
        meta = json.loads((mdir / "meta.json").read_text())
        cfg["data"] = str(data_dir)
        if ds is None:
            ds = load_dataset(data_dir, cfg)
            by_id = {it.image_id: it for it in ds.test}
            items = [by_id[i] for i in ds.test_ids]
            log(f"kernel: {len(items)} test images, {len(ds.classes)} classes in {data_dir}")
        model = load_model(train_cfg, load_file(str(mdir / "model.safetensors")), cfg, device)
        _, crops, tfm, _ = split_transform("test", cfg, meta, tricks["flip"], tricks["multicrop"],
                                           tricks["gallery_pipeline"])
        queries.append(embed_with(model, items, tfm, crops, cfg, device, tricks["flip"]))
        del model
        stem = spec["gallery_stem"]
        gallery.append(np.load(mdir / f"{stem}.npy", mmap_mode="r"))
        rows = read_csv(mdir / f"{stem}.csv", required=["image_id", "label"])
        if labels is not None and [r["label"] for r in rows] != labels:
            raise SystemExit(f"kernel: {mdir / stem}.csv lists other gallery images than the first model's")
        labels = [r["label"] for r in rows]
        timings[name] = time.time() - t
        log(f"kernel: {name}: embedded {len(items)} test images in {timings[name]:.1f}s")
    t = time.time()
    preds = scoring.predict(queries, gallery, labels, ds.classes, tricks, spec["max_memory"], log)
    timings["rank"] = time.time() - t
    rows = write_submission(out_csv, [it.image_id for it in items], preds, expected_ids=ds.test_ids,
                            known_classes=ds.classes, id_column=ds.id_column, label_column=ds.label_column)
    log(f"kernel: ranked in {timings['rank']:.1f}s; wrote and validated {out_csv} ({len(rows)} rows); "
        f"total {time.time() - t0:.1f}s")
    return rows
