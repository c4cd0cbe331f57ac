"""A classifier head's class centers (its L2-normalised class weight rows, K sub-centers per class), extracted
once per checkpoint and cached beside the run's embeddings as <stem>.npy / <stem>.csv (the class-score fusion that
uses them: inference/logits.py)."""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.io import damaged, load_npy, read_table, save_npy, write_table, write_text

CENTERS = "centers"  # the stem of a run's class centers beside its embeddings


@dataclass(frozen=True)
class ClassCenters:
    """A classifier head's class weights: labels[c] (the checkpoint's class order) and array (C, K, D) float16 or
    float32, unit rows (K sub-centers per class)."""
    labels: list[str]
    array: np.ndarray


def centers_from_checkpoint(state: dict) -> ClassCenters | None:
    """The class centers of a loaded checkpoint (pipeline.core.checkpoint.load): its head rebuilt from its
    config and state; None for pair losses (supcon, triplet), which have no class weights."""
    from pipeline.model.heads import build_head

    classes = [str(c) for c in state["classes"]]
    # class sizes only set margins, which are buffers the state overwrites and which centers do not use
    head = build_head(state["config"], len(classes), [1] * len(classes))
    head.load_state_dict(state["head"])
    centers = getattr(head, "class_centers", None)
    if centers is None:
        return None
    return ClassCenters(classes, centers().numpy())


def _paths(path_stem) -> tuple[Path, Path]:
    stem = str(path_stem)  # not with_suffix: a stem may hold dots (a hash, a version)
    return Path(stem + ".npy"), Path(stem + ".csv")


def save_centers(path_stem, centers: ClassCenters) -> None:
    """<stem>.npy (the array) and <stem>.csv (column label, one row per class), each written atomically."""
    import pandas as pd

    npy, csv = _paths(path_stem)
    save_npy(npy, centers.array)
    write_table(csv, pd.DataFrame({"label": list(centers.labels)}))


def load_centers(path_stem, fix: str = "embed again (./run.sh embed: the centers are cached with the embeddings)"
                 ) -> ClassCenters:
    npy, csv = _paths(path_stem)
    if not npy.is_file():
        raise UserError(f"{npy}: class centers not found (they are cached beside the run's embeddings: embed again)")
    labels = read_table(csv, ["label"], ours=fix)["label"].tolist()
    array = load_npy(npy, fix)  # a few MB to ~100 MB per model at Hotel-ID scale: read on use
    if array.ndim != 3 or array.shape[0] != len(labels):
        raise damaged(npy, f"centers of shape {array.shape} for the {len(labels)} labels of {csv.name}, expected "
                      f"({len(labels)}, K, D)", fix)
    return ClassCenters(labels, array)


def ensure_centers(out: Path, stem: str, manifest: dict, ck_hash: str, state: Callable[[], dict]) -> None:
    """A run's class centers saved as <out>/<stem>.npy/.csv beside its embeddings, once per checkpoint (its content
    hash, recorded in the embeddings' manifest.json); state() gives the loaded checkpoint. A pair head (supcon,
    triplet) has none: its manifest entry says so."""
    import json

    if manifest.get(stem, {}).get("key") == ck_hash:
        return
    centers = centers_from_checkpoint(state())
    if centers is not None:
        save_centers(out / stem, centers)
    manifest[stem] = {"key": ck_hash, "classes": len(centers.labels) if centers else 0}
    write_text(out / "manifest.json", json.dumps(manifest, indent=1))
