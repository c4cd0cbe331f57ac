"""Embed the gallery (all training images, test pipeline), the validation fold (val pipeline) and the test images
with a trained run: runs/<config>/fold<k>/embeddings/<split>.npy (float16, L2-normalised rows), <split>.csv
(image_id,label in row order; label empty for test) and manifest.json.

A split is recomputed only when its cache key changes: the checkpoint's content hash, the image list (path, size,
mtime), the transform and image size. A second call with nothing changed runs no forward pass.

example: ./run.sh embed m1 --data data/demo --fold 0"""
import hashlib
import json
import time

import numpy as np

from .errors import UserError

SPLITS = ("gallery", "val", "test")
VERSION = 1  # bump when the embedding code changes what it computes


def add_arguments(p):
    p.add_argument("config", help="config name (m1 ...) or .yaml path of a trained run")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--fold", type=int, help="fold of the run (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default: config's, best)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args):
    from .config import load_config

    cfg = load_config(args.config, args.overrides, data=args.data, fold=args.fold, checkpoint=args.checkpoint)
    ensure_embeddings(cfg)


def _key(ck_hash, items, transform, size):
    h = hashlib.sha256(f"v{VERSION}|{ck_hash}|{transform}|{size}".encode())
    for it in items:
        st = it.path.stat()
        h.update(f"|{it.image_id}|{it.path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _save_npy(path, arr):
    from .io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def ensure_embeddings(cfg, log=print):
    """Compute the splits whose cache is stale; returns {'dir': Path, 'computed': [split names]}."""
    import torch

    from . import checkpoint
    from .config import run_dir
    from .data.transforms import build_transform, describe
    from .inference import embed_items, pick_device
    from .io import write_csv, write_text
    from .model import build_model
    from .train import split

    run = run_dir(cfg)
    ck_path = run / f"{cfg['checkpoint']}.pt"
    if not ck_path.is_file():
        raise UserError(f"{ck_path} not found: train first (./run.sh train {cfg['name']} --fold {cfg['fold']})")
    ck_hash = checkpoint.file_hash(ck_path)
    ds, _, val_items, _ = split(cfg)
    test_by_id = {it.image_id: it for it in ds.test}
    items = {"gallery": ds.train, "val": val_items, "test": [test_by_id[i] for i in ds.test_ids]}
    out = run / "embeddings"
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    state, model, device, computed = None, None, pick_device(), []
    for name in SPLITS:
        state = state or checkpoint.load(ck_path, cfg)
        size, mean, std = state["image_size"], state["mean"], state["std"]
        tfm = build_transform("val" if name == "val" else "test", cfg, size, mean, std)
        key = _key(ck_hash, items[name], describe(tfm), size)
        entry = manifest.get(name, {})
        if entry.get("key") == key and (out / f"{name}.npy").is_file() and (out / f"{name}.csv").is_file():
            continue
        if model is None:
            model, _ = build_model(state["config"], with_weights=False)
            model.load_state_dict(state["model"])
            model.to(device, memory_format=torch.channels_last if cfg["channels_last"] else torch.contiguous_format)
        t0 = time.time()
        emb, _ = embed_items(model, items[name], tfm, cfg, device)
        _save_npy(out / f"{name}.npy", emb)
        write_csv(out / f"{name}.csv", ["image_id", "label"], [(it.image_id, it.label or "") for it in items[name]])
        manifest[name] = {"key": key, "rows": len(emb), "dim": int(emb.shape[1]) if emb.size else 0,
                          "checkpoint": str(ck_path), "checkpoint_sha256": ck_hash, "image_size": size,
                          "transform": describe(tfm)}
        write_text(manifest_path, json.dumps(manifest, indent=1))
        computed.append(name)
        log(f"embedded {cfg['name']} {name}: {len(emb)} images in {time.time() - t0:.1f}s")
    if not computed:
        log(f"embeddings of {cfg['name']} fold {cfg['fold']} are up to date ({out})")
    return {"dir": out, "computed": computed}


def load_split(emb_dir, name):
    """(embeddings float16 memmap, image ids, labels) of one split."""
    from .io import read_csv

    path = emb_dir / f"{name}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found: run ./run.sh embed first")
    rows = read_csv(emb_dir / f"{name}.csv", required=["image_id", "label"])
    emb = np.load(path, mmap_mode="r")
    if len(rows) != len(emb):
        raise UserError(f"{path}: {len(emb)} rows but {name}.csv has {len(rows)}: delete {emb_dir} and re-embed")
    return emb, [r["image_id"] for r in rows], [r["label"] for r in rows]
