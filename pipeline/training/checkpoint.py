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


def rng_state(device: str) -> dict:
    """This process's random streams: the CPU generator's and, training on CUDA, its GPU's (dropout there draws
    from it). Only the current GPU's: a process trains on one, and a resume may see another number of GPUs."""
    state = {"cpu": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(saved: "list[dict] | torch.Tensor", rank: int, device: str) -> bool:
    """This rank's streams from last.pt's "rng": one rng_state() per rank, or (files from before per-rank streams)
    the one process's CPU state. False when the file has none for this rank (it was saved by fewer processes): the
    rank keeps its fresh stream, as a resume with another number of processes cannot repeat the masks anyway."""
    if isinstance(saved, torch.Tensor):
        saved = [{"cpu": saved}]
    if rank >= len(saved):
        return False
    torch.set_rng_state(saved[rank]["cpu"])
    if device == "cuda" and "cuda" in saved[rank]:
        torch.cuda.set_rng_state(saved[rank]["cuda"])
    return True


def restore_scaler(scaler: "torch.amp.GradScaler", saved: dict | None) -> None:
    """The AMP loss scale and its growth counter from last.pt. A file without them (older, or trained without AMP:
    a disabled scaler's state is empty) leaves the fresh scaler, which is what that run would have started with."""
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
