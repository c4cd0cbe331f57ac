"""NECKS: the config's `neck` name -> a builder (in_features, embedding_dim, dropout) -> nn.Module, between the
pooled backbone features and the embedding."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm


def mlp_neck(in_features: int, dim: int, dropout: float) -> nn.Module:
    """SPEC 2 (7th place): weight-norm Linear(in->2E), BN, Dropout, weight-norm Linear(2E->E), BN."""
    return nn.Sequential(
        weight_norm(nn.Linear(in_features, 2 * dim)),
        nn.BatchNorm1d(2 * dim),
        nn.Dropout(dropout),
        weight_norm(nn.Linear(2 * dim, dim)),
        nn.BatchNorm1d(dim),
    )


def linear_neck(in_features: int, dim: int, dropout: float) -> nn.Module:
    """Seed 001: one linear layer to the embedding."""
    return nn.Linear(in_features, dim)


def bn_neck(in_features: int, dim: int, dropout: float) -> nn.Module:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = self.projection(x)
        return self.norm(self.dropout(self.fc(F.gelu(projected))) + projected)


NECKS = {"mlp": mlp_neck, "linear": linear_neck, "bn": bn_neck, "projection": ProjectionNeck}
