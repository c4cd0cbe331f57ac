"""Forward passes that turn images into L2-normalised embeddings (shared by training's validation and embed).

Under torchrun each process embeds every world-th batch of the one-process batching and rank 0 gets them back in
order, so its result is byte for byte the one-process result; the other ranks get None."""
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.dataset import ImageDataset, MultiCropDataset, collate_crops, loader
from pipeline.training import distributed
from pipeline.training.distributed import autocast

if TYPE_CHECKING:
    import albumentations as A

    from pipeline.data.layouts import Item
    from pipeline.data.transforms import MultiCrop


def _batches(n, size):
    """The one-process batches of n items, this process's share of them."""
    return distributed.shard([list(range(i, min(i + size, n))) for i in range(0, n, size)])


def _forward(model, x, cfg, device, flip):
    """(e(x), the embedding to keep): e(x) itself, or with flip TTA e(x) + e(hflip x), the raw embeddings of the
    transformed tensor and of its horizontal mirror (so a val image's simulated red hole is mirrored with it);
    the caller L2-normalises."""
    x = x.to(device, non_blocking=True)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, cfg["amp"]):
        e = model(x).float()
        return e, (e + model(x.flip(3)).float() if flip else e)


@torch.no_grad()
def embed_items(model: torch.nn.Module, items: "list[Item]", transform: "A.Compose", cfg: dict, device: str,
                head: torch.nn.Module | None = None, codes: dict[str, int] | None = None,
                progress: Callable[[int], object] | None = None,
                flip: bool = False) -> tuple[np.ndarray | None, dict | None]:
    """(embeddings float16 (n, E) L2-normalised, head stats or None); (None, None) on ranks other than 0. Sample i
    is augmented with seed i, so a random transform (the validation mask) is the same on every call. flip: the
    embedding is L2-normalise(e(x) + e(hflip x)) (the head's loss and accuracy still use e(x) alone)."""
    model.eval()
    ds = ImageDataset(items, transform, codes)
    dl = loader(ds, batch_sampler=_batches(len(items), cfg["eval_batch_size"]), num_workers=cfg["num_workers"],
                device=device)
    done = []  # per batch: (embeddings, loss x batch size, correct)
    logits = getattr(head, "logits", None)  # pair losses (supcon, triplet) have no classes to score
    for x, y in dl:
        e, emb = _forward(model, x, cfg, device, flip)
        loss = correct = 0
        if head is not None:
            y = y.to(device)
            loss = head(e, y).item() * len(y)
            if logits is not None:
                correct = (logits(e).argmax(1) == y).sum().item()
        done.append((F.normalize(emb, dim=1).cpu().numpy().astype(np.float16), loss, correct))
        if progress:
            progress(len(x))
    done = distributed.gather_in_order(done)
    if done is None:
        return None, None
    emb = np.concatenate([b[0] for b in done]) if done else np.zeros((0, 0), np.float16)
    stats = None
    if head is not None and items:
        stats = {"loss": sum(b[1] for b in done) / len(items),
                 "acc": sum(b[2] for b in done) / len(items) if logits is not None else None}
    return emb, stats


@torch.no_grad()
def embed_multicrop(model: torch.nn.Module, items: "list[Item]", multicrop: "MultiCrop", cfg: dict, device: str,
                    flip: bool = False, progress: Callable[[int], object] | None = None) -> np.ndarray | None:
    """Multi-crop query embeddings, float16 (n, E): the MEAN of the L2-normalised embeddings of each image's kept
    crops (transforms.MultiCrop; with flip each crop's embedding is normalise(e(c) + e(hflip c))).

    The 7th-place solution SUMS a query's similarities over its kept crops: sum_c cos(c, g) = (sum_c u_c) . g,
    so the sum of the crops' unit embeddings as the query embedding gives exactly those scores. We store the mean
    (sum / kept crops), NOT renormalised: one query's ranking is the same for any positive scale, but the ensemble
    adds models' scores, and a per-query scale of one model (a sum over 1-9 kept crops) would reweight that model
    query by query; the mean keeps its scores on the cosine scale, in [-1, 1] like every other model's (its rows'
    norms are <= 1, equal to 1 only when a single view is kept). None on ranks other than 0."""
    model.eval()
    ds = MultiCropDataset(items, multicrop)
    per_batch = max(1, cfg["eval_batch_size"] // multicrop.n)  # images per batch, so crops per batch ~ eval size
    dl = loader(ds, batch_sampler=_batches(len(items), per_batch), num_workers=cfg["num_workers"], device=device,
                collate_fn=collate_crops)
    done = []
    for x, counts in dl:
        u = F.normalize(_forward(model, x, cfg, device, flip)[1], dim=1)
        done.append(torch.stack([c.mean(0) for c in torch.split(u, counts)]).cpu().numpy().astype(np.float16))
        if progress:
            progress(len(counts))
    done = distributed.gather_in_order(done)
    if done is None:
        return None
    return np.concatenate(done) if done else np.zeros((0, 0), np.float16)
