"""The embedding model: timm backbone (classifier removed) -> pooling -> neck -> E-dim embedding.
NECKS maps the config's `neck` name to a builder (in_features, embedding_dim, dropout) -> nn.Module."""
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


def mlp_neck(in_features, dim, dropout):
    """SPEC 2 (7th place): weight-norm Linear(in->2E), BN, Dropout, weight-norm Linear(2E->E), BN."""
    return nn.Sequential(
        weight_norm(nn.Linear(in_features, 2 * dim)),
        nn.BatchNorm1d(2 * dim),
        nn.Dropout(dropout),
        weight_norm(nn.Linear(2 * dim, dim)),
        nn.BatchNorm1d(dim),
    )


def linear_neck(in_features, dim, dropout):
    """Seed 001: one linear layer to the embedding."""
    return nn.Linear(in_features, dim)


def bn_neck(in_features, dim, dropout):
    """The peers' BN neck (Landmark 2020/21, Happywhale 1st): Linear then BatchNorm, no bias before BN."""
    return nn.Sequential(nn.Linear(in_features, dim, bias=False), nn.BatchNorm1d(dim))


class ProjectionNeck(nn.Module):
    """Seed 002's projection head: Linear -> GELU -> Linear -> Dropout, residual to the first Linear, LayerNorm."""

    def __init__(self, in_features, dim, dropout):
        super().__init__()
        self.projection = nn.Linear(in_features, dim)
        self.fc = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        projected = self.projection(x)
        return self.norm(self.dropout(self.fc(F.gelu(projected))) + projected)


NECKS = {"mlp": mlp_neck, "linear": linear_neck, "bn": bn_neck, "projection": ProjectionNeck}


class Embedder(nn.Module):
    def __init__(self, backbone, in_features, embedding_dim, dropout, pooling, gem_p, neck="mlp"):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p) if pooling == "gem" else None
        self.neck = NECKS[neck](in_features, embedding_dim, dropout)

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


def _token_model(model):
    """Models that take their input size at creation (ViT, Swin, ResMLP ...) output tokens, not feature maps."""
    import inspect

    return "img_size" in inspect.signature(type(model).__init__).parameters


def create_backbone(cfg, with_weights=True):
    """timm backbone with no classifier. with_weights=False skips pretrained loading (a checkpoint follows)."""
    import timm

    from .weights import load_backbone_weights, resolve_pretrained

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
    if source == "timm":
        model = timm.create_model(name, pretrained=True, **kw)
    elif source:
        load_backbone_weights(model, name, source[len("file:"):])
    if cfg["pooling"] == "gem":
        if _token_model(model):
            raise UserError(f"pooling=gem needs a CNN backbone; {name} outputs tokens: use pooling=avg")
        model.reset_classifier(0, global_pool="")
    else:  # the model's own pooling: average for CNNs, the class token for ViTs
        model.reset_classifier(0)
    return model, source


def build_model(cfg, with_weights=True):
    if cfg["pooling"] not in ("avg", "gem"):
        raise UserError(f"pooling '{cfg['pooling']}' unknown (avg | gem)")
    if cfg["neck"] not in NECKS:
        raise UserError(f"neck '{cfg['neck']}' unknown ({' | '.join(NECKS)})")
    backbone, source = create_backbone(cfg, with_weights)
    model = Embedder(backbone, backbone.num_features, cfg["embedding_dim"], cfg["neck_dropout"],
                     cfg["pooling"], cfg["gem_p"], cfg["neck"])
    return model, source
