"""Optimisation: parameter groups with their own learning rates, the optimiser and scheduler registries,
ReduceLROnPlateau state and the EMA of the weights.

The learning rate of group g at optimiser step s is lr * lr_mult[g] * warmup_then_schedule(s) * plateau_scale,
so every schedule gets the same warm-up and a resume restores it exactly from (step, plateau state)."""
import math
from typing import TYPE_CHECKING

from pipeline.errors import UserError

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
    text = lambda n: n.startswith("text.encoder.")  # text/clip.py ClipHead: the encoder, not its projection
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


# Schedules map progress t in [0, 1] after warm-up and the floor min_lr/lr to a factor of the peak lr.
SCHEDULERS = {
    "cosine": lambda t, floor: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)),
    "linear": lambda t, floor: floor + (1 - floor) * (1 - t),
    "constant": lambda t, floor: 1.0,
    "plateau": lambda t, floor: 1.0,  # cuts come from Plateau, applied on top
}


def check_scheduler(cfg: dict) -> None:
    if cfg["scheduler"] not in SCHEDULERS:
        raise UserError(f"unknown scheduler '{cfg['scheduler']}' ({' | '.join(SCHEDULERS)})")


def lr_factor(cfg: dict, step: int, total: int) -> float:
    """Linear warm-up over warmup_steps, then the configured schedule over the remaining steps."""
    warm = cfg["warmup_steps"]
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    floor = cfg["min_lr"] / cfg["lr"] if cfg["lr"] else 0.0
    return SCHEDULERS[cfg["scheduler"]](t, floor)


class Plateau:
    """ReduceLROnPlateau (mode max) on val MAP@5: after `patience` epochs without a new best, scale *= factor.
    Its state is a plain dict kept in the checkpoint's progress."""

    def __init__(self, cfg, state=None):
        self.enabled = cfg["scheduler"] == "plateau"
        self.patience, self.factor = cfg["plateau"]["patience"], cfg["plateau"]["factor"]
        self.state = state or {"best": -math.inf, "bad": 0, "scale": 1.0}

    @property
    def scale(self) -> float:
        return self.state["scale"]

    def step(self, metric: float | None) -> bool:
        if not self.enabled or metric is None:
            return False
        if metric > self.state["best"] * (1 + 1e-4):  # torch's default relative threshold, mode max
            self.state.update(best=metric, bad=0)
            return False
        self.state["bad"] += 1
        if self.state["bad"] > self.patience:
            self.state.update(scale=self.state["scale"] * self.factor, bad=0)
            return True
        return False


def make_ema(cfg: dict, model: "torch.nn.Module") -> "ModelEmaV3 | None":
    """timm's ModelEmaV3 of the embedding model, or None when ema is 0."""
    if not cfg["ema"]:
        return None
    if not 0.0 < cfg["ema"] < 1.0:
        raise UserError(f"ema={cfg['ema']}: the EMA decay must be in (0, 1), e.g. ema=0.999 (0 = off)")
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg["ema"])
