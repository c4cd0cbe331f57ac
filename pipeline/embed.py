"""Embed the gallery (all training images, test pipeline), the validation fold (val pipeline) and the test images
with a trained run: runs/<config>/fold<k>/embeddings/<stem>.npy (float16 rows), <stem>.csv (image_id,label in
row order; label empty for test) and manifest.json (one entry per stem).

Embedding-time variants, each cached under its own file stem (the defaults are the plain gallery/val/test):
  --flip                    flip TTA on every split: normalise(e(x) + e(hflip x))          stem <split>.flip
  --multicrop 5|9           the queries (val, test) as the mean of their kept crops' unit
                            embeddings, crops more than half red (the occlusion) dropped    stem <split>.mc5 / .mc9
  --gallery-pipeline val    the gallery embedded with the val pipeline (simulated red hole) stem gallery.galval
e.g. --flip --multicrop 9 gives gallery.flip, val.flip.mc9, test.flip.mc9.

A stem is recomputed only when its cache key changes: the checkpoint's content hash, the image list (path, size,
mtime), the transform (with the variant) and image size. A second call with nothing changed runs no forward pass.

--nproc N embeds under torchrun with N processes (one GPU each): each takes every N-th batch and rank 0 writes
the same files, byte for byte, as one process.

example: ./run.sh embed m1 --data data/demo --fold 0 --flip --multicrop 5"""
import hashlib
import json
import time

import numpy as np

from .errors import UserError

SPLITS = ("gallery", "val", "test")
GALLERY_PIPELINES = ("test", "val")
VERSION = 1  # bump when the embedding code changes what it computes


def add_arguments(p):
    p.add_argument("config", help="config name (m1 ...) or .yaml path of a trained run")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--fold", type=int, help="fold of the run (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default: config's, best)")
    p.add_argument("--flip", action="store_true", help="flip TTA on every split: normalise(e(x) + e(hflip x))")
    p.add_argument("--multicrop", type=int, default=0, metavar="N",
                   help="queries (val, test) as the mean of their crops' embeddings, mostly-red crops dropped: "
                        "5 (corners + centre, 60%% side) or 9 (3x3 grid, 50%% side); 0 = off (default)")
    p.add_argument("--gallery-pipeline", default="test", metavar="{test,val}",
                   help="embed the gallery with the test pipeline (default) or the val one (simulated red hole)")
    p.add_argument("--nproc", type=int, metavar="N", help="processes (GPUs) under torchrun; default 1")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def run(args):
    from .config import load_config
    from .distributed import run_stage

    cfg = load_config(args.config, args.overrides, data=args.data, fold=args.fold, checkpoint=args.checkpoint)
    check_variant(args.flip, args.multicrop, args.gallery_pipeline)
    run_stage(args.nproc, args._argv, lambda: ensure_embeddings(
        cfg, flip=args.flip, multicrop=args.multicrop, gallery_pipeline=args.gallery_pipeline), same_threads=True)


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


def check_variant(flip=False, multicrop=0, gallery_pipeline="test"):
    """The variant as (bool, int, str); a value that is not allowed is a one-line UserError naming it."""
    from .data.transforms import MULTICROPS

    if multicrop not in MULTICROPS:
        raise UserError(f"multicrop {multicrop!r}: not one of {', '.join(map(str, MULTICROPS))} (0 = off)")
    if gallery_pipeline not in GALLERY_PIPELINES:
        raise UserError(f"gallery pipeline {gallery_pipeline!r}: not one of {', '.join(GALLERY_PIPELINES)}")
    return bool(flip), int(multicrop), gallery_pipeline


def stem(split, flip=False, multicrop=0, gallery_pipeline="test"):
    """File stem of a split's embeddings under a variant; the defaults give the plain split name."""
    return (split + (".flip" if flip else "") + (f".mc{multicrop}" if multicrop and split in ("val", "test") else "")
            + (".galval" if split == "gallery" and gallery_pipeline == "val" else ""))


def ensure_embeddings(cfg, log=print, flip=False, multicrop=0, gallery_pipeline="test"):
    """Compute the stems whose cache is stale; returns {'dir': Path, 'computed': [stems computed],
    'stems': {'gallery': stem, 'val': stem, 'test': stem}} (load_split(dir, stems[split]) reads one).
    flip: flip TTA on every split; multicrop: 0, 5 or 9 crops per query (val, test); gallery_pipeline: test | val."""
    from . import checkpoint, distributed
    from .config import run_dir
    from .inference import pick_device
    from .io import write_csv, write_text
    from .train import split

    flip, multicrop, gallery_pipeline = check_variant(flip, multicrop, gallery_pipeline)
    log = distributed.main_only(log)  # rank 0 reports and writes; the others compute their shares
    run = run_dir(cfg)
    ck_path = run / f"{cfg['checkpoint']}.pt"
    if not ck_path.is_file():
        raise UserError(f"{ck_path} not found: train first (./run.sh train {cfg['name']} --fold {cfg['fold']})")
    ck_hash = checkpoint.file_hash(ck_path)
    ds, _, val_items, _ = split(cfg)
    test_by_id = {it.image_id: it for it in ds.test}
    items = {"gallery": ds.train, "val": val_items, "test": [test_by_id[i] for i in ds.test_ids]}
    stems = {name: stem(name, flip, multicrop, gallery_pipeline) for name in SPLITS}
    out = run / "embeddings"
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    state, model, device, computed = None, None, pick_device(), []
    for name in SPLITS:
        state = state or checkpoint.load(ck_path, cfg)
        size = state["image_size"]
        kind, crops, tfm, text = split_transform(name, cfg, state, flip, multicrop, gallery_pipeline)
        key = _key(ck_hash, items[name], text, size)
        st = stems[name]
        entry = manifest.get(st, {})
        if entry.get("key") == key and (out / f"{st}.npy").is_file() and (out / f"{st}.csv").is_file():
            continue
        if model is None:
            model = load_model(state["config"], state["model"], cfg, device)
        t0 = time.time()
        emb = embed_with(model, items[name], tfm, crops, cfg, device, flip)
        computed.append(st)
        if emb is None:  # another rank's share: rank 0 has it now
            continue
        _save_npy(out / f"{st}.npy", emb)
        write_csv(out / f"{st}.csv", ["image_id", "label"], [(it.image_id, it.label or "") for it in items[name]])
        manifest[st] = {"key": key, "rows": len(emb), "dim": int(emb.shape[1]) if emb.size else 0,
                        "checkpoint": str(ck_path), "checkpoint_sha256": ck_hash, "image_size": size,
                        "transform": text}
        if st != name:
            manifest[st].update(split=name, flip=flip, multicrop=crops, pipeline=kind)
        write_text(manifest_path, json.dumps(manifest, indent=1))
        log(f"embedded {cfg['name']} {st}: {len(emb)} images in {time.time() - t0:.1f}s")
    if not computed:
        which = "" if list(stems.values()) == list(SPLITS) else f" ({', '.join(stems.values())})"
        log(f"embeddings of {cfg['name']} fold {cfg['fold']}{which} are up to date ({out})")
    return {"dir": out, "computed": computed, "stems": stems}


def split_transform(name, cfg, meta, flip=False, multicrop=0, gallery_pipeline="test"):
    """(pipeline kind, crops, transform, its cache-key text) of one split under a variant; meta: a checkpoint (or
    the kernel's model meta) with image_size, mean, std. Shared by embed and the Kaggle kernel."""
    from .data.transforms import MultiCrop, build_transform, describe

    size, mean, std = meta["image_size"], meta["mean"], meta["std"]
    kind = "val" if name == "val" or (name == "gallery" and gallery_pipeline == "val") else "test"
    crops = multicrop if name in ("val", "test") else 0
    tfm = MultiCrop(kind, crops, size, mean, std) if crops else build_transform(kind, cfg, size, mean, std)
    # the key text of a default stem is exactly the transform's, so today's caches stay valid
    text = describe(tfm) + ("|flip: normalise(e(x) + e(hflip x))" if flip else "")
    return kind, crops, tfm, text


def load_model(model_cfg, state_dict, cfg, device):
    """The embedding model of a run (built without pretrained weights, then given its trained ones), on device."""
    import torch

    from .model import build_model

    model, _ = build_model(model_cfg, with_weights=False)
    model.load_state_dict(state_dict)
    return model.to(device, memory_format=torch.channels_last if cfg["channels_last"] else torch.contiguous_format)


def embed_with(model, items, tfm, crops, cfg, device, flip=False):
    """float16 (n, E) embeddings of items: plain, or the multi-crop mean when crops > 0 (None on ranks but 0)."""
    from .inference import embed_items, embed_multicrop

    if crops:
        return embed_multicrop(model, items, tfm, cfg, device, flip=flip)
    return embed_items(model, items, tfm, cfg, device, flip=flip)[0]


def load_split(emb_dir, name):
    """(embeddings float16 memmap, image ids, labels) of one stem (a split name, or ensure_embeddings' stems[split]);
    each stem has its own .npy and .csv, written together."""
    from .io import read_csv

    path = emb_dir / f"{name}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found: run ./run.sh embed first")
    rows = read_csv(emb_dir / f"{name}.csv", required=["image_id", "label"])
    emb = np.load(path, mmap_mode="r")
    if len(rows) != len(emb):
        raise UserError(f"{path}: {len(emb)} rows but {name}.csv has {len(rows)}: delete {emb_dir} and re-embed")
    return emb, [r["image_id"] for r in rows], [r["label"] for r in rows]
