"""The timm backbone of a config: created by name with its classifier removed, pretrained weights from a local
file, timm's caches or a package on disk (model/weights.py), and the input size and normalisation it expects."""
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch


def input_config(cfg: dict, backbone: "torch.nn.Module") -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std): the config's where set, else the backbone's pretrained config."""
    pre = getattr(backbone, "pretrained_cfg", None) or {}
    size = cfg["image_size"] or pre.get("input_size", (3, 224, 224))[-1]
    mean = tuple(cfg["mean"] or pre.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg["std"] or pre.get("std", (0.229, 0.224, 0.225)))
    return int(size), mean, std


def _token_model(model):
    """Models that take their input size at creation (ViT, Swin, ResMLP ...) output tokens, not feature maps."""
    import inspect

    return "img_size" in inspect.signature(type(model).__init__).parameters


def create_backbone(cfg: dict, with_weights: bool = True) -> "tuple[torch.nn.Module, str | None]":
    """timm backbone with no classifier. with_weights=False skips pretrained loading (a checkpoint follows)."""
    import timm

    from pipeline.model.weights import load_backbone_weights, resolve_pretrained

    name = cfg["backbone"]
    if not timm.is_model(name):
        raise UserError(f"unknown backbone '{name}' (any timm model name; list them with timm.list_models())")
    model = timm.create_model(name, pretrained=False)
    kw = {}
    if cfg["image_size"] and _token_model(model):
        # Transformers and MLP-mixers fix their token grid at creation; timm resamples position embeddings.
        default = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 0, 0))[-1]
        if cfg["image_size"] != default:
            kw["img_size"] = cfg["image_size"]
            model = timm.create_model(name, pretrained=False, **kw)
    source = resolve_pretrained(cfg, model) if with_weights else None
    if source and source.startswith("hub cache:"):
        # timm's own loader (its checkpoint filters, e.g. resampled position embeddings) on the cached file: no hub call
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": source[len("hub cache:"):]},
                                  **kw)
    elif source:
        load_backbone_weights(model, name, source[len("file:"):])
    if cfg["pooling"] == "gem":
        if _token_model(model):
            raise UserError(f"pooling=gem needs a CNN backbone; {name} outputs tokens: use pooling=avg")
        model.reset_classifier(0, global_pool="")
    else:  # the model's own pooling: average for CNNs, the class token for ViTs
        model.reset_classifier(0)
    return model, source
