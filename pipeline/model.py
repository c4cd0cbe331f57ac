"""The embedding model: timm backbone (classifier removed) -> pooling -> neck of SPEC 2 -> E-dim embedding."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from .errors import UserError


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent (p = 1 is average, p -> inf is max)."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x):
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class Embedder(nn.Module):
    def __init__(self, backbone, in_features, embedding_dim, dropout, pooling, gem_p):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p) if pooling == "gem" else None
        self.neck = nn.Sequential(
            weight_norm(nn.Linear(in_features, 2 * embedding_dim)),
            nn.BatchNorm1d(2 * embedding_dim),
            nn.Dropout(dropout),
            weight_norm(nn.Linear(2 * embedding_dim, embedding_dim)),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x):
        feats = self.backbone(x)
        if self.pool is not None:
            feats = self.pool(feats)
        return self.neck(feats)


def input_config(cfg, backbone):
    """(image_size, mean, std): the config's where set, else the backbone's pretrained config."""
    pre = getattr(backbone, "pretrained_cfg", None) or {}
    size = cfg["image_size"] or pre.get("input_size", (3, 224, 224))[-1]
    mean = tuple(cfg["mean"] or pre.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg["std"] or pre.get("std", (0.229, 0.224, 0.225)))
    return int(size), mean, std


def create_backbone(cfg, with_weights=True):
    """timm backbone with no classifier. with_weights=False skips pretrained loading (a checkpoint follows)."""
    import timm

    from .weights import load_backbone_weights, resolve_pretrained

    name = cfg["backbone"]
    if not timm.is_model(name):
        raise UserError(f"unknown backbone '{name}' (any timm model name; list them with timm.list_models())")
    model = timm.create_model(name, pretrained=False)
    source = resolve_pretrained(cfg, model) if with_weights else None
    if source == "timm":
        model = timm.create_model(name, pretrained=True)
    elif source:
        load_backbone_weights(model, name, source[len("file:"):])
    model.reset_classifier(0, global_pool="" if cfg["pooling"] == "gem" else "avg")
    return model, source


def build_model(cfg, with_weights=True):
    if cfg["pooling"] not in ("avg", "gem"):
        raise UserError(f"pooling '{cfg['pooling']}' unknown (avg | gem)")
    backbone, source = create_backbone(cfg, with_weights)
    model = Embedder(backbone, backbone.num_features, cfg["embedding_dim"], cfg["neck_dropout"],
                     cfg["pooling"], cfg["gem_p"])
    return model, source
