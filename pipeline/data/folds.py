"""Folds: a seeded split of the training images stratified by class (folds/folds.csv: image_id,label,fold), and
the train / validation split of a config's fold. Classes with one image get fold -1: always in training, never
validated. A config's `pseudo` file (./run.sh pseudo) adds pseudo-labelled test images to the training items only:
never to a validation fold, the folds file or a gallery. Its extra_data (data/extra.py) adds outside images to the
training items and their own classes to the class space, or to the ranking gallery (gallery_items), as extra_images
says: never to a validation fold or the folds file."""
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.io import read_table, write_table
from pipeline.data import extra
from pipeline.data.layouts import Dataset, Item, load_dataset

PSEUDO_COLUMNS = ["image_id", "label", "margin", "score"]  # what ./run.sh pseudo writes; split reads the first two


@dataclass
class PseudoItem(Item):
    """A test image with the label the ensemble gave it: trained on, never validated, never in a gallery."""


def assign_folds(items: Iterable[Item], n_folds: int, seed: int) -> dict[str, int]:
    """{image_id: fold}. Each class's images, shuffled by a seed of (seed, class), are dealt round-robin
    starting where the previous class stopped, so folds stay balanced in size and in classes."""
    if n_folds < 2:
        raise UserError(f"--n-folds {n_folds}: need at least 2")
    by_class = defaultdict(list)
    for it in items:
        by_class[it.label].append(it.image_id)
    folds, cursor = {}, 0
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        if len(ids) == 1:
            folds[ids[0]] = -1
            continue
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        for i in rng.permutation(len(ids)):
            folds[ids[i]] = cursor % n_folds
            cursor += 1
    return folds


def write_folds(ds: Dataset, out: str | Path, n_folds: int = 10, seed: int = 42,
                log: Callable[[str], object] | None = None) -> list[tuple[str, str, int]]:
    """Write the folds CSV of dataset `ds` to `out`; returns its rows (image_id, label, fold) sorted by id."""
    folds = assign_folds(ds.train, n_folds, seed)
    rows = sorted((it.image_id, it.label, folds[it.image_id]) for it in ds.train)
    import pandas as pd

    write_table(out, pd.DataFrame(rows, columns=["image_id", "label", "fold"]))
    if log:
        counts = np.bincount([f + 1 for _, _, f in rows], minlength=n_folds + 1)
        log(f"wrote {out}: {len(rows)} images, {len(ds.classes)} classes, {n_folds} folds "
            f"(sizes {counts[1:].min()}-{counts[1:].max()}; {counts[0]} single-image always in training)")
    return rows


def read_folds(path: str | Path, ds: Dataset) -> dict[str, int]:
    """{image_id: fold} checked against the dataset: a stale or foreign folds file is a UserError."""
    from pipeline.config import read_fold_table, refold

    folds, labels = read_fold_table(path, ds.root)
    ids = {it.image_id for it in ds.train}
    fix = refold(ds.root, path)
    if set(folds) != ids:
        extra, missing = set(folds) - ids, ids - set(folds)
        what = f"'{sorted(missing)[0]}' not in it" if missing else f"'{sorted(extra)[0]}' not in the data"
        raise UserError(f"{path} does not match {ds.root} ({len(missing)} missing, {len(extra)} extra; {what}): {fix}")
    for it in ds.train:
        if labels[it.image_id] != it.label:
            raise UserError(f"{path}: label of '{it.image_id}' differs from the data: {fix}")
    return folds


def split(cfg: dict, log: Callable[[str], object] | None = None) -> tuple[Dataset, list[Item], list[Item], list[str]]:
    """(dataset, train items, val items, classes) for the config's data and fold; the config's pseudo-labelled test
    images (PseudoItem), then its outside images (ExtraItem) come last among the train items, and the outside classes
    of their own after the competition's classes. The outside images the ranking gallery adds: ds.gallery_extra."""
    extra.check(cfg)
    ds = load_dataset(cfg["data"], cfg)
    folds = read_folds(cfg["folds_file"], ds)
    present = set(folds.values()) - {-1}
    if cfg["fold"] not in present | {-1}:  # else the run would train on everything and validate on nothing, unsaid
        from pipeline.config import fold_text

        raise UserError(f"fold {cfg['fold']} is not in {cfg['folds_file']} (its folds: {fold_text(present) or 'none'}):"
                        " give one of them (or fold=-1: train on every image, no validation)")
    # fold -1 holds the images that always train: as the config's fold it means no validation fold at all
    val_items = [it for it in ds.train if folds[it.image_id] == cfg["fold"] != -1]
    train_items = [it for it in ds.train if folds[it.image_id] != cfg["fold"] or cfg["fold"] == -1]
    if cfg.get("pseudo"):  # .get: a config saved before the key existed has none
        added = read_pseudo(cfg["pseudo"], ds)
        if log:
            log(f"pseudo-labels: {len(added)} test images of {cfg['pseudo']} added to the {len(train_items)} "
                "training images (never validated, never in a gallery)")
        train_items += added
    outside = extra.extra_items(cfg, ds.classes, ds.root, log) if cfg.get("extra_data") else []
    taught, ds.gallery_extra = extra.trained(cfg, outside), extra.ranked(cfg, outside)
    if outside and log:
        log(f"outside data: {len(taught)} images trained on, {len(ds.gallery_extra)} in the ranking gallery "
            f"(extra_images={cfg.get('extra_images', 'train')}); never validated")
    return ds, train_items + taught, val_items, ds.classes + extra.classes_of(taught)


def labelled(items: list[Item]) -> list[Item]:
    """The competition's own labelled items (pseudo-labelled test images and outside images left out): what
    training's validation ranks against."""
    return [it for it in items if not isinstance(it, (PseudoItem, extra.ExtraItem))]


def gallery_items(ds: Dataset) -> list[Item]:
    """The ranking gallery of embed and ensemble: every competition training image, then the outside images
    extra_images puts there (split sets ds.gallery_extra; mapped onto competition classes only)."""
    return ds.train + ds.gallery_extra


def read_pseudo(path: str | Path, ds: Dataset) -> list[PseudoItem]:
    """The test images of a pseudo-label CSV (image_id,label,...) with their labels, checked against the dataset:
    every id a test image, listed once, every label a training class."""
    fix = f"write it with ./run.sh pseudo CONFIG... --threshold T --data {ds.root} --out {path}, or set pseudo=''"
    if not Path(path).is_file():
        raise UserError(f"pseudo={path}: file not found; {fix}")
    rows = read_table(path, required=PSEUDO_COLUMNS[:2], fix=f"; {fix}")
    test, classes = {it.image_id: it for it in ds.test}, set(ds.classes)
    items, seen = [], set()
    for n, (image_id, label) in enumerate(zip(rows["image_id"], rows["label"]), start=2):
        if image_id not in test:
            raise UserError(f"{path} row {n}: '{image_id}' is not a test image of {ds.root}; {fix}")
        if label not in classes:
            raise UserError(f"{path} row {n}: label '{label}' of '{image_id}' is not a training class of {ds.root}; "
                            f"{fix}")
        if image_id in seen:
            raise UserError(f"{path} row {n}: '{image_id}' listed twice; list each test image once")
        seen.add(image_id)
        items.append(PseudoItem(image_id, test[image_id].path, label))
    return items
