"""OPTIMIZERS: parameter groups with their own learning rates (the head's lr_mult; layer-wise decay inside the
backbone), the optimiser built from the config's name, gradient clipping (CLIP_MODES) and the EMA of the weights."""
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
    lr * lr_mult[group]; with layer_decay the backbone is timm's layer-wise groups (backbone.layerN)."""
    text = lambda n: n.startswith("text.encoder.")  # model/clip.py ClipHead: the encoder, not its projection
    parts = {"backbone": list(model.backbone.parameters()),
             "neck": [p for n, p in model.named_parameters() if not n.startswith("backbone.")],
             "head": [p for n, p in head.named_parameters() if not text(n)],
             "text": [p for n, p in head.named_parameters() if text(n)]}
    groups = [{"params": params, "lr": cfg["lr"] * cfg["lr_mult"][name], "name": name}
              for name, params in parts.items() if params]
    if cfg["layer_decay"]:
        groups = _layer_decay(model.backbone, cfg) + groups[1:]
    return groups


def _layer_decay(backbone: "torch.nn.Module", cfg: dict) -> list[dict]:
    """timm's layer-wise lr decay groups of the backbone (as its train.py --layer-decay): the stem and early blocks
    at lr x layer_decay^depth, the last at lr; weight decay as in timm, none on biases and norms."""
    decay = cfg["layer_decay"]  # in [0, 1): config.RANGES
    from timm.optim import param_groups_layer_decay

    try:
        groups = param_groups_layer_decay(backbone, weight_decay=cfg["weight_decay"], layer_decay=decay,
                                          no_weight_decay_list=getattr(backbone, "no_weight_decay", set)())
    except (AttributeError, NotImplementedError, AssertionError):
        raise UserError(f"layer_decay: timm has no layer grouping for backbone {cfg['backbone']}; set layer_decay=0"
                        ) from None
    base = cfg["lr"] * cfg["lr_mult"]["backbone"]
    return [{"params": g["params"], "weight_decay": g["weight_decay"], "lr": base * g["lr_scale"],
             "name": f"backbone.layer{i}"} for i, g in enumerate(groups)]


CLIP_MODES = {"norm", "value", "agc"}  # timm.utils.dispatch_clip_grad's modes


def check_clipping(cfg: dict) -> None:
    if cfg["clip_mode"] not in CLIP_MODES:
        raise UserError(f"clip_mode={cfg['clip_mode']!r}: use {' | '.join(sorted(CLIP_MODES))}")


def clip_gradients(cfg: dict, model: "torch.nn.Module", head: "torch.nn.Module") -> None:
    """timm's clipping of the (unscaled) gradients at clip_grad. norm and value take the model's and the head's;
    agc the model's alone: timm's train.py leaves the classifier out of adaptive clipping (NFNet paper, 4.1)."""
    from timm.utils import dispatch_clip_grad

    params = list(model.parameters()) + ([] if cfg["clip_mode"] == "agc" else list(head.parameters()))
    dispatch_clip_grad([p for p in params if p.grad is not None], cfg["clip_grad"], mode=cfg["clip_mode"])


def make_optimizer(cfg: dict, model: "torch.nn.Module", head: "torch.nn.Module") -> "torch.optim.Optimizer":
    name = cfg["optimizer"]
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{name}' ({' | '.join(OPTIMIZERS)})")
    return OPTIMIZERS[name](param_groups(model, head, cfg), cfg)


def make_ema(cfg: dict, model: "torch.nn.Module") -> "ModelEmaV3 | None":
    """timm's ModelEmaV3 of the embedding model, or None when ema is 0."""
    if not cfg["ema"]:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg["ema"])
