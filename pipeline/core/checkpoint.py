"""Checkpoints: written atomically, read with weights_only=True, checked against the config that reads them."""
import functools
from pathlib import Path

import torch

from pipeline.core.errors import UserError
from pipeline.core.io import atomic_path, damaged, file_sha256

# Keys that change the model's shape or meaning: a checkpoint made under other values cannot be resumed/used.
ARCH_KEYS = ("backbone", "pooling", "neck", "embedding_dim", "head")


def save(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# What every checkpoint of a run holds (what embed, ensemble and init_from read), and what last.pt adds for a resume
ENTRIES = ("model", "head", "config", "classes")
RESUME_ENTRIES = ENTRIES + ("optimizer", "scheduler", "progress", "rng")


def load(path: str | Path, cfg: dict | None = None, entries: tuple[str, ...] = ENTRIES) -> dict:
    """A checkpoint of this pipeline, read with weights_only=True; a missing file, a file torch cannot read, one
    without the entries a checkpoint has (a bare state dict, another tool's file) or made for another model (cfg's
    ARCH_KEYS) is a one-line UserError naming it."""
    path = Path(path)
    name = cfg["name"] if cfg else "<config>"
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found (train first: ./run.sh train {name})")
    fix = f"retrain: ./run.sh train {name}" + (f" --fold {cfg['fold']}" if cfg else "")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise damaged(path, f"unreadable checkpoint: {type(e).__name__}", fix) from None
    missing = [k for k in entries if not isinstance(state, dict) or k not in state]
    if missing:
        raise damaged(path, f"no {', '.join(repr(k) for k in missing)} entry: not a checkpoint of this pipeline's "
                      "training", fix)
    if not isinstance(state["config"], dict):
        raise damaged(path, "its 'config' entry is not a mapping", fix)
    if cfg is not None:
        for key in ARCH_KEYS:
            if state["config"].get(key) != cfg.get(key):
                raise UserError(f"{path} was made with {key}={state['config'].get(key)!r}, the config says "
                                f"{cfg.get(key)!r}: use a matching config or another runs_dir")
    return state


def init_from(model: torch.nn.Module, head: torch.nn.Module, run: str | Path, classes: list, log=print) -> str:
    """Two-stage fine-tuning (SPEC 5, 2nd place): the backbone and neck weights (and BatchNorm statistics) of
    another run's best.pt into `model`, which must have the same shapes; its head's learnt weights into `head` when
    it was trained on the same classes in the same order with the same kind of head, else the head keeps its fresh
    initialisation. The head's buffers stay this run's (sub-center ArcFace's margins follow this run's class
    sizes). Returns the weights' source for the training log."""
    path = Path(run) / "best.pt"
    if not path.is_file():
        raise UserError(f"init_from={run}: no best.pt in it; give a trained run folder (runs/<config>/fold<k>)")
    ck = load(path)
    mine, theirs, was = _shapes(model.state_dict()), _shapes(ck["model"]), ck["config"]
    for key in sorted(mine.keys() | theirs.keys()):
        if mine.get(key) != theirs.get(key):
            raise UserError(f"init_from={run}: its {key} is {theirs.get(key, 'missing')}, this model's "
                            f"{mine.get(key, 'missing')} (it is {was['backbone']}, pooling {was['pooling']}, neck "
                            f"{was['neck']}, embedding_dim {was['embedding_dim']}): give a run of this config's "
                            "backbone, pooling, neck and embedding_dim")
    model.load_state_dict(ck["model"])
    fresh = _shapes(dict(head.named_parameters()))
    learnt = {k: v for k, v in ck["head"].items() if k in fresh}
    if ck["classes"] != classes:
        why = f"its {len(ck['classes'])} classes are not this run's {len(classes)} in the same order"
    elif _shapes(learnt) != fresh:
        why = f"its {was['head']} head's weights do not fit this {type(head).__name__}"
    else:
        head.load_state_dict({**head.state_dict(), **learnt})
        why = None
    log(f"init_from {path}: backbone and neck loaded, head "
        + (f"re-initialised ({why})" if why else f"loaded ({len(classes)} classes, the same)"))
    return f"init_from {path}"


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


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
    """sha256 of a file's bytes, computed once per (path, size, mtime) in a process: a run's steps (embeddings,
    class centers, the rotation classifier) each key their files by it."""
    st = Path(path).stat()
    return _hash(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _hash(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)
