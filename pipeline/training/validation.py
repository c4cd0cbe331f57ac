"""Validation during training: which epochs validate (val_every; the last one always does), the gallery the val
fold is ranked against (val_gallery: every training image, or at most n per class), the metrics of the model and of
its EMA, and the seconds they take. Validation draws no random numbers (fixed per-sample seeds, an explicit loader
generator, eval mode): skipping it changes no weights, only best.pt and the plateau cuts, which it feeds.
val_weights=hotels weighs each query so validation's mix of hotels is the test's (query_weights)."""
import time
from collections import Counter

import numpy as np

from pipeline.core import distributed
from pipeline.core.errors import UserError
from pipeline.core.progress import Progress
from pipeline.inference.predict import predict
from pipeline.retrieval.embeddings import item_set
from pipeline.retrieval.forward import embed_items
from pipeline.retrieval.metrics import average_precision_at_k

_GALLERY_SALT = 0x6A11  # the gallery draw's own stream: the samplers draw from [seed, epoch]
TEXT_COLUMNS = tuple(f"val_{way}_r{k}" for way in ("t2i", "i2t") for k in (1, 5, 10))  # a clip run's Recall@k
_COLUMNS = ("val_loss", "val_acc", "val_map5", "ema_val_map5", "val_seconds")  # what an epoch's validation fills
VAL_WEIGHTS = ("images", "hotels")
# gallery sizes within a factor 1.25 share a stratum (1-6 each its own): exact sizes would leave out the hotels of
# every size no query has, most of the big ones at Hotel-ID's scale (on the demo both read within 0.007)
SIZE_STEP = 1.25


def check(cfg: dict) -> None:
    known = ("val_map5", "ema_val_map5") + (TEXT_COLUMNS if cfg["head"] == "clip" else ())
    if cfg["select_on"] not in known:
        raise UserError(f"select_on={cfg['select_on']!r}: use one of {', '.join(known)} (the Recall@k columns need "
                        "head=clip; ema_val_map5 needs ema > 0)")
    v = cfg["val_gallery"]  # an 'auto' key takes any scalar (config._coerce); config.RANGES bounds its numbers
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int)):
        raise UserError(f"val_gallery={v!r}: give a whole number >= 0 (0 = every training image, n = at most n "
                        "training images per class) or auto")
    if cfg["val_weights"] not in VAL_WEIGHTS:
        raise UserError(f"val_weights={cfg['val_weights']!r}: use hotels (the test's photos spread evenly over "
                        "hotels) or images (each validation query counts once)")


AUTO_GALLERY = (10_000, 5)  # val_gallery=auto: above this many training images, at most this many per class


def per_class(cfg: dict, train_images: int) -> int:
    """val_gallery resolved: auto keeps every training image of a small fold (the demo's 1,750: its figures are
    unchanged) and caps a large one (Hotel-ID's ~40,000 photos of 3,116 hotels: ~13,000), so validation's
    gallery pass is bounded rather than a third of an epoch."""
    if cfg["val_gallery"] != "auto":
        return cfg["val_gallery"]
    most, cap = AUTO_GALLERY
    return cap if train_images > most else 0


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


def query_weights(how: str, query_labels: list, gallery_labels: list) -> np.ndarray:
    """Each validation query's weight in val MAP@5 (mean 1). images: 1 each. hotels: as if the test spread its
    photos evenly over hotels (the demo's does), where a stratified fold draws queries in proportion to a hotel's
    photos, so big, easy hotels dominate. A query's hotel has g images in the gallery, all of them trained on: it
    stands for the hotels with g gallery images, so each stratum of g (SIZE_STEP) is weighted by its share of the
    gallery's hotels over its share of the queries. Hotels of a stratum no query has are left out."""
    if how == "images":
        return np.ones(len(query_labels))
    g = Counter(gallery_labels)
    hotels = Counter(_stratum(n) for n in g.values())
    strata = [_stratum(g[y]) for y in query_labels]
    queries = Counter(strata)
    w = np.array([hotels[s] / queries[s] for s in strata], float)
    return w * len(w) / w.sum() if w.sum() else np.ones(len(w))


def _stratum(size: int) -> int:
    return round(np.log(size) / np.log(SIZE_STEP)) if size > 0 else -1


def weighted_map5(predictions: list, truth: list, weights: np.ndarray) -> float:
    """MAP@5 with each query's average precision weighted (query_weights)."""
    ap = np.array([average_precision_at_k(p, t, 5) for p, t in zip(predictions, truth)])
    return float(ap @ weights / weights.sum()) if len(ap) else 0.0


def plan(cfg: dict, gallery_size: int, train_size: int) -> str:
    """The start line's note on validation where it differs from the default (each epoch, every training image)."""
    every = f", validating every {cfg['val_every']} epochs" if cfg["val_every"] > 1 else ""
    subset = f", val gallery {gallery_size} of {train_size} training images" if gallery_size < train_size else ""
    return every + subset


def evaluate(model, head, gallery_items, val_items, classes, codes, tfms, cfg, device, reader=None,
             captions=None, keep=None) -> dict:
    """Validation metrics, the same on every rank (each embeds its share; rank 0 scores). reader: how images are
    read (data/image_cache.py). captions (a clip run's held-out text/captions.Captions): adds TEXT_COLUMNS, the
    image-text Recall@k of the validation images and their captions (a clip head has no class loss). keep: a dict
    given the embeddings on rank 0 (queries, gallery: training/logbook.py draws a few)."""
    if not val_items:
        return {}
    scoring = None if hasattr(head, "encode_text") else head
    q, stats = embed_items(model, val_items, tfms["val"], cfg, device, head=scoring, codes=codes, reader=reader,
                           progress=_progress(cfg, len(val_items), "val queries"))
    g, _ = embed_items(model, gallery_items, tfms["test"], cfg, device, reader=reader,
                       progress=_progress(cfg, len(gallery_items), "gallery"))
    if keep is not None and q is not None:
        keep.update(queries=q, gallery=g)
    metrics = None
    if q is not None:
        truth, gallery_labels = [it.label for it in val_items], [it.label for it in gallery_items]
        preds = predict([q], item_set(g, gallery_items), classes, max_memory=cfg["max_memory"], log=lambda *a: None)
        score = weighted_map5(preds, truth, query_weights(cfg["val_weights"], truth, gallery_labels))
        metrics = {"val_loss": (stats or {}).get("loss"), "val_acc": (stats or {}).get("acc"), "val_map5": score}
        if captions is not None:
            from pipeline.model.clip import encode_texts
            from pipeline.text.retrieval import recall_metrics

            texts = encode_texts(head, captions.texts, device)
            metrics.update(recall_metrics(q, [it.image_id for it in val_items], captions, texts, prefix="val_",
                                          max_memory=cfg["max_memory"]))
    return distributed.broadcast(metrics)


def _progress(cfg, total, what):
    """Lines (or a bar) while validation embeds; its end is the epoch's line."""
    return Progress(total, f"validating {cfg['name']} {what}", final=False, enabled=distributed.is_main())


def validate(run, keep=None) -> dict:
    """The epoch's validation of run (the loop's state): the model's metrics, ema_val_map5 with an EMA, and
    val_seconds; {} without a val fold. keep: evaluate's, for the model (not its EMA)."""
    if not run.val_items:
        return {}
    t = time.time()
    args = (getattr(run.head, "head", run.head),  # validation batches hold no replicas: LossTransform's term is moot
            run.gallery, run.val_items, run.classes, run.codes, run.tfms, run.cfg, run.device, run.reader,
            run.text.val if run.text else None)
    metrics = evaluate(run.model, *args, keep=keep)
    if run.ema is not None:
        metrics["ema_val_map5"] = evaluate(run.ema.module, *args)["val_map5"]
    metrics["val_seconds"] = round(time.time() - t, 2)  # embed_items' results are on the host: the GPU is done
    return metrics


def columns(metrics: dict | None) -> dict:
    """The metrics.csv cells validation fills: empty where it did not run (or has no such figure)."""
    return {k: "" if (metrics or {}).get(k) is None else metrics[k] for k in _COLUMNS + TEXT_COLUMNS}


def describe(metrics: dict | None, cfg: dict, seconds: float) -> str:
    """The epoch line's validation part; metrics None: the epoch did not validate."""
    if metrics is None:
        return f"not validated (val_every={cfg['val_every']})"
    if not metrics:
        return "no val"
    acc = f" acc {metrics['val_acc']:.3f}" if metrics.get("val_acc") is not None else ""
    loss = f"val loss {metrics['val_loss']:.3f}{acc} " if metrics.get("val_loss") is not None else "val "
    text = (f" text->image R@1/5/10 {metrics['val_t2i_r1']:.3f}/{metrics['val_t2i_r5']:.3f}/"
            f"{metrics['val_t2i_r10']:.3f}" if "val_t2i_r1" in metrics else "")
    ema = f" EMA MAP@5 {metrics['ema_val_map5']:.4f}" if "ema_val_map5" in metrics else ""
    share = f"val {metrics['val_seconds']} s = {metrics['val_seconds'] / max(seconds, 1e-9):.0%} of the epoch"
    return f"{loss}MAP@5 {metrics['val_map5']:.4f}{text}{ema}, {share}"
