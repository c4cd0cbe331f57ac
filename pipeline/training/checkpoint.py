"""Checkpoints: written atomically, read with weights_only=True, checked against the config that reads them."""
import hashlib
from pathlib import Path

import torch

from pipeline.errors import UserError
from pipeline.io import atomic_path

# Keys that change the model's shape or meaning: a checkpoint made under other values cannot be resumed/used.
ARCH_KEYS = ("backbone", "pooling", "neck", "embedding_dim", "head")


def save(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path, cfg: dict | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        name = cfg["name"] if cfg else "<config>"
        raise UserError(f"checkpoint {path} not found (train first: ./run.sh train {name})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it and retrain") from None
    if cfg is not None:
        for key in ARCH_KEYS:
            if state["config"].get(key) != cfg.get(key):
                raise UserError(f"{path} was made with {key}={state['config'].get(key)!r}, the config says "
                                f"{cfg.get(key)!r}: use a matching config or another runs_dir")
    return state


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
