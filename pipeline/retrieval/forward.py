"""Forward passes that turn images into L2-normalised embeddings (shared by training's validation and embed).

Under torchrun each process embeds every world-th batch of the one-process batching and rank 0 gets them back in
order, so its result is byte for byte the one-process result; the other ranks get None. start/stop embed a slice of
the items (a chunk of a resumable embedding) with the batches and seeds the whole list would give them: start is a
multiple of images_per_batch, and item i is seeded with i wherever the slice begins."""
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core import distributed
from pipeline.core.device import autocast
from pipeline.core.errors import UserError
from pipeline.core.io import save_npy, write_text
from pipeline.core.progress import Progress
from pipeline.data import decode
from pipeline.data.dataset import ImageDataset, MultiCropDataset, collate_crops, loader
from pipeline.model.memory_format import layout

if TYPE_CHECKING:
    import albumentations as A

    from pipeline.data.image_cache import ImageReader
    from pipeline.data.layouts import Item
    from pipeline.data.transforms import MultiCrop
    from pipeline.retrieval.orientation import Orienter


EMBEDDING_DTYPE = np.float16  # of the stored rows: half the disk and memory, and ample for cosine ranking


def images_per_batch(cfg: dict, crops: int = 0) -> int:
    """Images per forward pass: eval_batch_size, or with multi-crop as many images as give about that many crops."""
    return max(1, cfg["eval_batch_size"] // crops) if crops else cfg["eval_batch_size"]


def _batches(start, stop, size):
    """The one-process batches of items start..stop-1 (global indices), this process's share of them."""
    return distributed.shard([list(range(i, min(i + size, stop))) for i in range(start, stop, size)])


def loader_workers(cfg: dict, reader: "ImageReader | None", device: str) -> int:
    """Loader workers of an embedding: num_workers, except that its default (-1) on the CPU reading the memmap image
    cache is none. The main process reads and resizes a cached image in ~0.1 ms (1-2% of the model's time), while
    workers cost more (their start, 0.1-0.2 s per call; handing batches over, ~0.15 ms an image) and take cores
    from the model's threads: 0.84x -> 1.0x the bare forward here (bench/embed_speed.py --breakdown)."""
    if cfg["num_workers"] >= 0 or device.startswith("cuda"):
        return cfg["num_workers"]
    cached = reader is not None and getattr(reader, "folder", None) is not None and reader.format == "memmap"
    return 0 if cached else cfg["num_workers"]


def _check_rotation(rotation):
    if isinstance(rotation, bool) or not isinstance(rotation, (int, np.integer)) or not 0 <= rotation <= 3:
        raise UserError(f"rotation {rotation!r}: give the quarter turns of the query views, 0, 1, 2 or 3")


def _forward(model, x, cfg, device, flip, rotation=0, orient=None):
    """(e(x), the embedding to keep): e(x) itself, or with flip TTA e(x) + e(hflip x), the raw embeddings of the
    transformed tensor and of its horizontal mirror (so a val image's simulated red hole is mirrored with it);
    the caller L2-normalises. Before the model, on the device: the batch turned `rotation` quarter turns, then
    each sample un-rotated by orient's predicted turns (retrieval/orientation.py), both before the flip."""
    x = x.to(device, non_blocking=True)
    if rotation:
        x = torch.rot90(x, rotation, (2, 3)).contiguous()  # a plain layout, as a turned image file gives
    if orient is not None:
        with autocast(device, cfg["amp"], cfg["amp_dtype"]):  # as train_orienter computed its head's features
            x = orient(x)
    x = x.contiguous(memory_format=layout(cfg, model, device, x.shape[-1]))  # the model's own (load_model)
    with autocast(device, cfg["amp"], cfg["amp_dtype"]):
        e = model(x).float()
        return e, (e + model(x.flip(3)).float() if flip else e)


@torch.no_grad()
def embed_items(model: torch.nn.Module, items: "list[Item]", transform: "A.Compose", cfg: dict, device: str,
                head: torch.nn.Module | None = None, codes: dict[str, int] | None = None,
                progress: Callable[[int], object] | None = None, flip: bool = False, start: int = 0,
                stop: int | None = None, reader: "ImageReader | None" = None, rotation: int = 0,
                orient: "Orienter | None" = None) -> tuple[np.ndarray | None, dict | None]:
    """(embeddings float16 (n, E) L2-normalised of items[start:stop], head stats or None); (None, None) on ranks
    other than 0. Sample i is augmented with seed i, so a random transform (the validation mask) is the same on
    every call. flip: the embedding is L2-normalise(e(x) + e(hflip x)) (the head's loss and accuracy still use e(x)
    alone). reader: how images are read (data/image_cache.py; default: whole, from their files). rotation: every
    (square) view turned that many quarter turns (torch.rot90 over H, W) before the model, for rotation TTA;
    orient: an Orienter that turns each view back upright first. progress(n): n more images embedded, over all
    processes (this one's batch times the world). The defaults change nothing. cfg's decode=gpu: the workers read
    the files' bytes and each batch is decoded and resized on the device (data/decode.py says where it applies)."""
    _check_rotation(rotation)
    model.eval()
    stop = len(items) if stop is None else stop
    gpu = decode.plan(cfg, transform, reader, device)  # decode=gpu: workers read bytes, batches decode on device
    ds = gpu.dataset(items, codes) if gpu else ImageDataset(items, transform, codes, reader)
    dl = loader(ds, batch_sampler=_batches(start, stop, images_per_batch(cfg)),
                num_workers=loader_workers(cfg, reader, device), device=device,
                collate_fn=decode.collate if gpu else None)
    done = []  # per batch: (embeddings, loss x batch size, correct)
    logits = getattr(head, "logits", None)  # pair losses (supcon, triplet) have no classes to score
    for x, y in dl:
        x = gpu.batch(x) if gpu else x
        e, emb = _forward(model, x, cfg, device, flip, rotation, orient)
        loss = correct = 0
        if head is not None:
            y = y.to(device)
            loss = head(e, y).item() * len(y)
            if logits is not None:
                correct = (logits(e).argmax(1) == y).sum().item()
        done.append((F.normalize(emb, dim=1).cpu().numpy().astype(EMBEDDING_DTYPE), loss, correct))
        if progress:
            progress(len(x) * distributed.world())
    done = distributed.gather_in_order(done)
    if done is None:
        return None, None
    emb = np.concatenate([b[0] for b in done]) if done else np.zeros((0, 0), EMBEDDING_DTYPE)
    stats, n = None, stop - start
    if head is not None and n > 0:
        stats = {"loss": sum(b[1] for b in done) / n,
                 "acc": sum(b[2] for b in done) / n if logits is not None else None}
    return emb, stats


@torch.no_grad()
def embed_multicrop(model: torch.nn.Module, items: "list[Item]", multicrop: "MultiCrop", cfg: dict, device: str,
                    flip: bool = False, progress: Callable[[int], object] | None = None, start: int = 0,
                    stop: int | None = None, reader: "ImageReader | None" = None, rotation: int = 0,
                    orient: "Orienter | None" = None) -> np.ndarray | None:
    """Multi-crop query embeddings, float16 (n, E): the MEAN of the L2-normalised embeddings of each image's kept
    crops (transforms.MultiCrop; with flip each crop's embedding is normalise(e(c) + e(hflip c))).

    The 7th-place solution SUMS a query's similarities over its kept crops: sum_c cos(c, g) = (sum_c u_c) . g,
    so the sum of the crops' unit embeddings as the query embedding gives exactly those scores. We store the mean
    (sum / kept crops), NOT renormalised: one query's ranking is the same for any positive scale, but the ensemble
    adds models' scores, and a per-query scale of one model (a sum over 1-9 kept crops) would reweight that model
    query by query; the mean keeps its scores on the cosine scale, in [-1, 1] like every other model's (its rows'
    norms are <= 1, equal to 1 only when a single view is kept). Of items[start:stop]; None on ranks other than 0.
    rotation, orient, progress: as embed_items, on each crop (so a crop is turned about its own centre)."""
    _check_rotation(rotation)
    decode.plan(cfg, multicrop, reader, device)  # None: decode=gpu is checked, and said not to apply to crops
    model.eval()
    stop = len(items) if stop is None else stop
    ds = MultiCropDataset(items, multicrop, reader)
    dl = loader(ds, batch_sampler=_batches(start, stop, images_per_batch(cfg, multicrop.n)),
                num_workers=loader_workers(cfg, reader, device), device=device, collate_fn=collate_crops)
    done = []
    for x, counts in dl:
        u = F.normalize(_forward(model, x, cfg, device, flip, rotation, orient)[1], dim=1)
        done.append(torch.stack([c.mean(0) for c in torch.split(u, counts)]).cpu().numpy().astype(EMBEDDING_DTYPE))
        if progress:
            progress(len(counts) * distributed.world())
    done = distributed.gather_in_order(done)
    if done is None:
        return None
    return np.concatenate(done) if done else np.zeros((0, 0), EMBEDDING_DTYPE)


def chunking(cfg: dict, crops: int, rows: int) -> dict:
    """How a split of `rows` images is cut: images per batch, and per chunk (embed_chunk rounded down to whole
    batches, at least one), so every chunk starts where a batch of the uninterrupted pass does."""
    batch = images_per_batch(cfg, crops)
    return {"batch": batch, "chunk": max(1, cfg["embed_chunk"] // batch) * batch, "rows": rows}


def embed_in_chunks(embed, meta: dict, parts: Path, log, what: str) -> np.ndarray | None:
    """embed(start=, stop=, progress=) over chunking's chunks, each saved under `parts` as it finishes; those a killed
    run left for the same meta (key and chunking, in parts/key.json) are kept. Their concatenation on rank 0, None
    elsewhere (rank 0 decides what is kept and writes; every rank computes its share of each missing chunk).
    progress: the split's Progress (embedding <what>: lines through log, or a bar), for embed_items."""
    n, chunk = meta["rows"], meta["chunk"]
    starts = range(0, n, chunk)
    kept = distributed.broadcast(_kept_chunks(parts, meta, starts) if distributed.is_main() else None)
    if kept:
        log(f"resuming {what}: {len(kept)} of {len(starts)} chunks kept ({parts})")
    bar = Progress(n, f"embedding {what}", log=log, done=sum(min(chunk, n - s) for s in kept),
                   enabled=distributed.is_main())
    for start in (s for s in starts if s not in kept):
        emb = embed(start=start, stop=min(start + chunk, n), progress=bar)
        if emb is not None:
            save_npy(parts / f"{start:09d}.npy", emb)
        if len(starts) > 1:
            log(f"embedded {what} {min(start + chunk, n)}/{n}")
    if not distributed.is_main():
        return None
    return np.concatenate([np.load(parts / f"{s:09d}.npy") for s in starts]) if n else np.zeros((0, 0), EMBEDDING_DTYPE)


def _kept_chunks(parts: Path, meta: dict, starts: range) -> set[int]:
    """The starts of the finished chunks under `parts` made for meta; a folder made for anything else is emptied
    and given meta's key.json."""
    try:
        same = json.loads((parts / "key.json").read_text()) == meta
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(parts, ignore_errors=True)
        write_text(parts / "key.json", json.dumps(meta))
        return set()
    return {s for s in starts if _rows(parts / f"{s:09d}.npy") == min(meta["chunk"], meta["rows"] - s)}


def _rows(path: Path) -> int:
    """Rows of a saved chunk, -1 when it is missing or unreadable (each is written atomically, so that is rare)."""
    try:
        return len(np.load(path, mmap_mode="r"))
    except (OSError, ValueError):
        return -1
