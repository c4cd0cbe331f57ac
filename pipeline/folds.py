"""Split the training images into folds, stratified by class: writes folds/folds.csv (image_id,label,fold).

The split is seeded and independent of file-system order. Classes with one image get fold -1: always in
training, never validated. Training on fold k validates on fold k (fold 0 of 10 = the 90/10 split).

example: ./run.sh folds --data data/demo --n-folds 10 --seed 42"""
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import UserError
from .io import read_csv, write_csv


def add_arguments(p):
    p.add_argument("--data", required=True, help="competition folder")
    p.add_argument("--n-folds", type=int, default=10, help="number of folds (default 10: a 90/10 split)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--layout", default=None, help="dataset layout (auto | hotelid | csv)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. csv.label_column=id")
    p.add_argument("--out", default="folds/folds.csv", help="output CSV (default folds/folds.csv)")


def assign_folds(items, n_folds, seed):
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


def write_folds(ds, out, n_folds=10, seed=42):
    folds = assign_folds(ds.train, n_folds, seed)
    rows = sorted((it.image_id, it.label, folds[it.image_id]) for it in ds.train)
    write_csv(out, ["image_id", "label", "fold"], rows)
    return rows


def read_folds(path, ds):
    """{image_id: fold} checked against the dataset: a stale or foreign folds file is a UserError."""
    rows = read_csv(path, required=["image_id", "label", "fold"])
    folds = {r["image_id"]: int(r["fold"]) for r in rows}
    labels = {r["image_id"]: r["label"] for r in rows}
    ids = {it.image_id for it in ds.train}
    fix = f"rerun ./run.sh folds --data {ds.root} --out {path}"
    if set(folds) != ids:
        extra, missing = set(folds) - ids, ids - set(folds)
        what = f"'{sorted(missing)[0]}' not in it" if missing else f"'{sorted(extra)[0]}' not in the data"
        raise UserError(f"{path} does not match {ds.root} ({len(missing)} missing, {len(extra)} extra; {what}): {fix}")
    for it in ds.train:
        if labels[it.image_id] != it.label:
            raise UserError(f"{path}: label of '{it.image_id}' differs from the data: {fix}")
    return folds


def run(args):
    from .config import load_config
    from .data.layouts import load_dataset

    ds = load_dataset(args.data, load_config("default", args.overrides, layout=args.layout))
    rows = write_folds(ds, Path(args.out), args.n_folds, args.seed)
    counts = np.bincount([f + 1 for _, _, f in rows], minlength=args.n_folds + 1)
    print(f"wrote {args.out}: {len(rows)} images, {len(ds.classes)} classes, {args.n_folds} folds "
          f"(sizes {counts[1:].min()}-{counts[1:].max()}; {counts[0]} single-image always in training)")
