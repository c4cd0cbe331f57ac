"""Our folds (data/folds.py: each class's images dealt round-robin, the cursor carried from class to class) against
scikit-learn's StratifiedKFold for the classes with at least n_folds images and our rule for the smaller ones
(singletons always train), on Hotel-ID-shaped class sizes (make-data's skewed counts at 14.3 training photos per
hotel). Prints JSON: fold sizes, the largest imbalance of a class over the folds, how many classes a fold misses
that it could hold, the share of images whose fold differs, and seconds.

usage (from the repo root): python bench/folds.py [--hotels 3116] [--n-folds 5] [--seed 42]"""
import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.folds import assign_folds  # noqa: E402
from pipeline.data.layouts import Item  # noqa: E402


def items_like_hotel_id(hotels: int, seed: int) -> list[Item]:
    """make-data's class sizes with --train-per-hotel 14.3 (data/synth.py), as items without images."""
    counts = np.random.default_rng(seed)
    n = 2 + np.minimum(counts.geometric(1 / 13.3, hotels) - 1, 98)
    return [Item(f"{h:05d}-{i:03d}", Path("unused"), f"hotel{h:05d}") for h in range(hotels) for i in range(n[h])]


def hybrid_folds(items: list[Item], n_folds: int, seed: int) -> dict[str, int]:
    """StratifiedKFold(shuffle, random_state=seed) over the classes with >= n_folds images; the smaller classes
    dealt as data/folds.py deals them (seeded per class, the cursor carried), singletons -1."""
    by_class = defaultdict(list)
    for it in items:
        by_class[it.label].append(it.image_id)
    big = [(i, lab) for lab in sorted(by_class) if len(by_class[lab]) >= n_folds for i in sorted(by_class[lab])]
    folds = {}
    if big:
        ids, labels = zip(*big)
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for k, (_, val) in enumerate(skf.split(np.zeros(len(ids)), labels)):
            for j in val:
                folds[ids[j]] = k
    small = [it for it in items if len(by_class[it.label]) < n_folds]
    folds.update(assign_folds(small, n_folds, seed))
    return folds


def describe(items: list[Item], folds: dict[str, int], n_folds: int, seconds: float) -> dict:
    sizes = np.bincount([folds[it.image_id] for it in items if folds[it.image_id] >= 0], minlength=n_folds)
    per_class = defaultdict(lambda: np.zeros(n_folds, int))
    for it in items:
        if folds[it.image_id] >= 0:
            per_class[it.label][folds[it.image_id]] += 1
    imbalance = max(int(c.max() - c.min()) for c in per_class.values())
    # a class of >= n_folds images missing from a fold: that fold cannot validate it
    missing = sum(int((c == 0).sum()) for c in per_class.values() if c.sum() >= n_folds)
    return {"fold_sizes": sizes.tolist(), "size_spread": int(sizes.max() - sizes.min()),
            "max_class_imbalance": imbalance, "big_class_fold_gaps": missing, "seconds": round(seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hotels", type=int, default=3116)
    ap.add_argument("--n-folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    items = items_like_hotel_id(args.hotels, args.seed)
    out = {"images": len(items), "classes": args.hotels, "n_folds": args.n_folds}
    for name, fn in (("ours", assign_folds), ("stratified_kfold_hybrid", hybrid_folds)):
        t = time.perf_counter()
        folds = fn(items, args.n_folds, args.seed)
        out[name] = describe(items, folds, args.n_folds, time.perf_counter() - t)
        out[name + "_folds"] = folds
    a, b = out.pop("ours_folds"), out.pop("stratified_kfold_hybrid_folds")
    out["images_in_another_fold"] = round(float(np.mean([a[i] != b[i] for i in a])), 4)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
