"""OPTIMIZERS: parameter groups with their own learning rates (the head's lr_mult), the optimiser built from
the config's name, and the EMA of the weights."""
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch
    from timm.utils import ModelEmaV3


def _sgd(groups, cfg):
    import torch

    return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def _adam(groups, cfg):
    import torch

    return torch.optim.Adam(groups, lr=cfg["lr"], betas=(cfg["momentum"], 0.999), weight_decay=cfg["weight_decay"])


def _adamw(groups, cfg):
    import torch

    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(cfg["momentum"], 0.999), weight_decay=cfg["weight_decay"])


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw}


def param_groups(model: "torch.nn.Module", head: "torch.nn.Module", cfg: dict) -> list[dict]:
    """Backbone, neck (with the pooling), head and text encoder (the clip head's) as separate groups, each at
    lr * lr_mult[group]."""
    text = lambda n: n.startswith("text.encoder.")  # model/clip.py ClipHead: the encoder, not its projection
    parts = {"backbone": list(model.backbone.parameters()),
             "neck": [p for n, p in model.named_parameters() if not n.startswith("backbone.")],
             "head": [p for n, p in head.named_parameters() if not text(n)],
             "text": [p for n, p in head.named_parameters() if text(n)]}
    return [{"params": params, "lr": cfg["lr"] * cfg["lr_mult"][name], "name": name}
            for name, params in parts.items() if params]


def make_optimizer(cfg: dict, model: "torch.nn.Module", head: "torch.nn.Module") -> "torch.optim.Optimizer":
    name = cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}' ({' | '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](param_groups(model, head, cfg), cfg)


def make_ema(cfg: dict, model: "torch.nn.Module") -> "ModelEmaV3 | None":
    """timm's ModelEmaV3 of the embedding model, or None when ema is 0."""
    if not cfg["ema"]:
        return None
    if not 0.0 < cfg["ema"] < 1.0:
        raise UserError(f"ema={cfg['ema']}: the EMA decay must be in (0, 1), e.g. ema=0.999 (0 = off)")
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg["ema"])
