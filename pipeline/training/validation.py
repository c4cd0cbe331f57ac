"""Validation during training: which epochs validate (val_every; the last one always does), the gallery the val
fold is ranked against (val_gallery: every training image, or at most n per class), the metrics of the model and of
its EMA, and the seconds they take. Validation draws no random numbers (fixed per-sample seeds, an explicit loader
generator, eval mode): skipping it changes no weights, only best.pt and the plateau cuts, which it feeds."""
import time

import numpy as np

from pipeline.errors import UserError
from pipeline.retrieval.embeddings import item_set
from pipeline.retrieval.forward import embed_items
from pipeline.retrieval.predict import map5
from pipeline.training import distributed

_GALLERY_SALT = 0x6A11  # the gallery draw's own stream: the samplers draw from [seed, epoch]
_COLUMNS = ("val_loss", "val_acc", "val_map5", "ema_val_map5", "val_seconds")  # what an epoch's validation fills


def check(cfg: dict) -> None:
    for key, low, what in (("val_every", 1, "validate every N epochs (1 = each; the last epoch always does)"),
                           ("val_gallery", 0, "0 = every training image, n = at most n training images per class")):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise UserError(f"{key}={v!r}: give a whole number >= {low} ({what})")


def due(cfg: dict, epoch: int) -> bool:
    """Whether the epoch (0-based) ends with validation: every val_every-th one, and the last."""
    return (epoch + 1) % cfg["val_every"] == 0 or epoch + 1 >= cfg["epochs"]


def gallery(items: list, per_class: int, seed: int) -> list:
    """The training images validation ranks against: all of them (per_class 0), or at most per_class of each class,
    drawn with the seed, in their original order. Every class keeps an image, so every query's class can be found."""
    if not per_class:
        return items
    taken, keep = {}, []
    for i in np.random.default_rng([seed, _GALLERY_SALT]).permutation(len(items)):
        label = items[i].label
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    return [items[i] for i in sorted(keep)]


def plan(cfg: dict, gallery_size: int, train_size: int) -> str:
    """The start line's note on validation where it differs from the default (each epoch, every training image)."""
    every = f", validating every {cfg['val_every']} epochs" if cfg["val_every"] > 1 else ""
    subset = f", val gallery {gallery_size} of {train_size} training images" if gallery_size < train_size else ""
    return every + subset


def evaluate(model, head, gallery_items, val_items, classes, codes, tfms, cfg, device, reader=None) -> dict:
    """Validation metrics, the same on every rank (each embeds its share; rank 0 scores). reader: how images are
    read (data/image_cache.py)."""
    if not val_items:
        return {}
    q, stats = embed_items(model, val_items, tfms["val"], cfg, device, head=head, codes=codes, reader=reader)
    g, _ = embed_items(model, gallery_items, tfms["test"], cfg, device, reader=reader)
    metrics = None
    if q is not None:
        score = map5(item_set(q, val_items), item_set(g, gallery_items), classes, max_memory=cfg["max_memory"],
                     log=lambda *a: None)
        metrics = {"val_loss": stats["loss"], "val_acc": stats["acc"], "val_map5": score}
    return distributed.broadcast(metrics)


def validate(run) -> dict:
    """The epoch's validation of run (the loop's state): the model's metrics, ema_val_map5 with an EMA, and
    val_seconds; {} without a val fold."""
    if not run.val_items:
        return {}
    t = time.time()
    args = (getattr(run.head, "head", run.head),  # validation batches hold no replicas: LossTransform's term is moot
            run.gallery, run.val_items, run.classes, run.codes, run.tfms, run.cfg, run.device, run.reader)
    metrics = evaluate(run.model, *args)
    if run.ema is not None:
        metrics["ema_val_map5"] = evaluate(run.ema.module, *args)["val_map5"]
    metrics["val_seconds"] = round(time.time() - t, 2)  # embed_items' results are on the host: the GPU is done
    return metrics


def columns(metrics: dict | None) -> dict:
    """The metrics.csv cells validation fills: empty where it did not run (or has no such figure)."""
    return {k: "" if (metrics or {}).get(k) is None else metrics[k] for k in _COLUMNS}


def describe(metrics: dict | None, cfg: dict, seconds: float) -> str:
    """The epoch line's validation part; metrics None: the epoch did not validate."""
    if metrics is None:
        return f"not validated (val_every={cfg['val_every']})"
    if not metrics:
        return "no val"
    acc = f" acc {metrics['val_acc']:.3f}" if metrics.get("val_acc") is not None else ""
    ema = f" EMA MAP@5 {metrics['ema_val_map5']:.4f}" if "ema_val_map5" in metrics else ""
    share = f"val {metrics['val_seconds']} s = {metrics['val_seconds'] / max(seconds, 1e-9):.0%} of the epoch"
    return f"val loss {metrics['val_loss']:.3f}{acc} MAP@5 {metrics['val_map5']:.4f}{ema}, {share}"
