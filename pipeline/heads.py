"""Heads/losses, all called as head(embeddings, labels) -> loss (the pytorch-metric-learning signature).
`head.logits(embeddings)` gives per-class scores without margin, for accuracy.
HEADS maps the config's `head` name to a class; its constructor takes (embedding_dim, num_classes, **cfg[name])."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ArcFace(nn.Module):
    """Additive angular margin as a prediction layer + cross-entropy, with the hard-margin rule of SPEC 2:
    target logit cos(theta + m) where cos(theta) > cos(pi - m), else cos(theta) - sin(pi - m) * m."""

    def __init__(self, embedding_dim, num_classes, s=30.0, m=0.2):
        super().__init__()
        self.s, self.m = s, m
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def logits(self, embeddings):
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))

    def forward(self, embeddings, labels):
        cosine = self.logits(embeddings)
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7))
        phi = cosine * self.cos_m - sine * self.sin_m
        phi = torch.where(cosine > self.th, phi, cosine - self.mm)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return F.cross_entropy(self.s * (one_hot * phi + (1.0 - one_hot) * cosine), labels)


class CosFace(nn.Module):
    """Additive cosine margin: pytorch-metric-learning's CosFaceLoss (holds the class weights)."""

    def __init__(self, embedding_dim, num_classes, s=64.0, m=0.35):
        super().__init__()
        from pytorch_metric_learning.losses import CosFaceLoss

        self.loss = CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=m, scale=s)

    def logits(self, embeddings):
        return self.loss.get_cosine(embeddings.float())

    def forward(self, embeddings, labels):
        return self.loss(embeddings.float(), labels)


HEADS = {"arcface": ArcFace, "cosface": CosFace}


def build_head(cfg, num_classes):
    from .errors import UserError

    name = cfg["head"]
    if name not in HEADS:
        raise UserError(f"unknown head '{name}' (known: {', '.join(HEADS)})")
    return HEADS[name](cfg["embedding_dim"], num_classes, **cfg.get(name, {}))
