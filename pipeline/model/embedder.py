"""The embedding model: a timm backbone (model/backbone.py) -> pooling -> neck -> E-dim embedding.
NECKS maps the config's `neck` name to a builder (in_features, embedding_dim, dropout) -> nn.Module."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import UserError
from pipeline.model.necks import NECKS


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent (p = 1 is average, p -> inf is max)."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class PixelNorm(nn.Module):
    """uint8 images (N, 3, H, W) -> normalised float32, on the model's device (the loader hands over uint8: a quarter
    of float32's bytes); a float input is taken as already normalised. The values are Albumentations' Normalize's
    own, looked up from the table it computes for each of the 256 levels per channel, so a model sees bit for bit
    what the CPU-normalised pipeline gave it. The table stays out of the state_dict (it comes from the config), so
    checkpoints are unchanged."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        import albumentations as A
        import numpy as np

        levels = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 256, 1), len(mean), axis=2)
        table = A.Normalize(mean=mean, std=std)(image=levels)["image"][0].T  # (channels, 256) float32
        # a plain attribute, not a buffer: DDP's start-up broadcast of buffers failed on it (gloo, torch 2.14), and
        # every rank builds the same table anyway; forward moves it to the input's device
        self.table = torch.from_numpy(np.ascontiguousarray(table)).flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if self.table.device != x.device:
            self.table = self.table.to(x.device)
        n, c, h, w = x.shape
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # the lookup, on x's device, over an (N, H, W, C) view (free for channels_last input) with int32 indices:
        # the same values in about a quarter of the CPU time of indexing with an int64 (N, C, H, W) tensor
        index = x.permute(0, 2, 3, 1).to(torch.int32) + torch.arange(c, dtype=torch.int32, device=x.device) * 256
        out = torch.index_select(self.table, 0, index.reshape(-1)).view(n, h, w, c).permute(0, 3, 1, 2)
        return out if channels_last else out.contiguous()


class Embedder(nn.Module):
    """PixelNorm -> backbone -> pooling -> neck."""

    def __init__(self, backbone, in_features, embedding_dim, dropout, pooling, gem_p, neck="mlp",
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.pixel_norm = PixelNorm(mean, std)
        self.backbone = backbone
        self.pool = GeM(gem_p) if pooling == "gem" else None
        self.neck = NECKS[neck](in_features, embedding_dim, dropout)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features (N, in_features): what the neck embeds."""
        feats = self.backbone(self.pixel_norm(x))
        return self.pool(feats) if self.pool is not None else feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(x))


def build_model(cfg: dict, with_weights: bool = True) -> tuple[Embedder, str | None]:
    if cfg["pooling"] not in ("avg", "gem"):
        raise UserError(f"pooling '{cfg['pooling']}' unknown (avg | gem)")
    if cfg["neck"] not in NECKS:
        raise UserError(f"neck '{cfg['neck']}' unknown ({' | '.join(NECKS)})")
    from pipeline.model.backbone import create_backbone, input_config

    backbone, source = create_backbone(cfg, with_weights)
    _, mean, std = input_config(cfg, backbone)
    model = Embedder(backbone, backbone.num_features, cfg["embedding_dim"], cfg["neck_dropout"],
                     cfg["pooling"], cfg["gem_p"], cfg["neck"], mean, std)
    return model, source
