"""Heads/losses, all called as head(embeddings, labels) -> scalar loss (the pytorch-metric-learning signature;
labels are int64 class codes). Classifier heads also give `head.logits(embeddings)`: (B, num_classes) cosines
without margin, for accuracy, `head.scale`: the logit scale s their softmax multiplies them by, and
`head.class_centers()`: (C, K, D) float32 L2-normalised class weight rows (K = 1, or the sub-center count) with
logits(e)[:, c] = max_j <normalize(e), centers[c, j]>; pair losses (supcon, triplet) have none of them (use
getattr(head, "logits", None), getattr(head, "class_centers", None)).
HEADS maps the config's `head` name to a class; every constructor takes
(embedding_dim, num_classes, class_counts=None, **cfg[name]), class_counts = training images per class code.
Angles and margins are in radians throughout (pml's ArcFaceLoss takes degrees; we never call it)."""
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.distributed import gather_batch
from pipeline.model.clip import ClipHead


def _f(x):
    """Half precision (AMP) -> float32 for the softmax; float64 is kept (the tests compare in float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _centers(weight: torch.Tensor, k: int) -> torch.Tensor:
    """Weight rows (C * k, D), row c*k + j for sub-center j of class c, as (C, k, D) float32 unit rows, detached."""
    w = F.normalize(weight.detach().float())
    return w.reshape(w.shape[0] // k, k, w.shape[1])


class CosFace(nn.Module):
    """Additive cosine margin m (in cosine units, not an angle): pytorch-metric-learning's CosFaceLoss
    (which holds the class weights, shape (D, C))."""

    def __init__(self, embedding_dim, num_classes, class_counts=None, s=64.0, m=0.35):
        super().__init__()
        from pytorch_metric_learning.losses import CosFaceLoss

        self.loss = CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=m, scale=s)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.loss.get_cosine(_f(embeddings))

    @property
    def scale(self) -> float:
        return self.loss.scale

    def class_centers(self) -> torch.Tensor:
        return _centers(self.loss.W.t(), 1)  # pml holds W as (D, C)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(_f(embeddings), labels)


def dynamic_margins(class_counts: Sequence[int] | torch.Tensor, m_min: float, m_max: float) -> torch.Tensor:
    """Per-class margins (radians) of SPEC 4: n_c^(-1/4) mapped linearly onto [m_min, m_max], the largest class
    getting m_min and the smallest m_max. Classes with no images, and all classes when every size is equal
    (nothing to rescale), get m_max."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    v = n.clamp(min=1).pow(-0.25)
    present = n > 0
    if not present.any():
        return torch.full_like(n, m_max)
    lo, hi = v[present].min(), v[present].max()
    if hi - lo <= 0:
        return torch.full_like(n, m_max)
    m = m_min + (v - lo) / (hi - lo) * (m_max - m_min)
    return torch.where(present, m, torch.full_like(m, m_max))


class SubCenterArcFace(nn.Module):
    """Sub-center ArcFace: k weight rows per class (row c*k + j is sub-center j of class c); a class's cosine is
    the max over its sub-centers, so noisy/multi-modal classes need not pull onto one center. Margins (radians)
    per class: dynamic_margins(class_counts, m_min, m_max) when `dynamic`, else m for all; the same hard-margin
    rule as ArcFace, per class. Without class_counts, dynamic margins are all m_max (as for equal sizes)."""
    saves_margins = True  # in its state_dict: a checkpoint's margins stand whatever class sizes rebuild the head

    def __init__(self, embedding_dim, num_classes, class_counts=None, s=30.0, k=3, dynamic=True,
                 m_min=0.05, m_max=0.5, m=0.2):
        super().__init__()
        self.scale, self.k, self.num_classes = s, k, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes * k, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        if dynamic:
            margins = dynamic_margins(class_counts if class_counts is not None else [1] * num_classes, m_min, m_max)
        else:
            margins = torch.full((num_classes,), float(m), dtype=torch.float64)
        if margins.numel() != num_classes:
            raise ValueError(f"class_counts has {margins.numel()} entries for {num_classes} classes")
        # buffers: they follow .to(device)/.double() (and are saved with the head's state_dict if saves_margins)
        for name, value in (("margins", margins), ("cos_m", torch.cos(margins)), ("sin_m", torch.sin(margins)),
                            ("th", torch.cos(math.pi - margins)), ("mm", torch.sin(math.pi - margins) * margins)):
            self.register_buffer(name, value.float(), persistent=self.saves_margins)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(_f(embeddings)), F.normalize(_f(self.weight)))
        return cos.view(-1, self.num_classes, self.k).amax(dim=2)

    def class_centers(self) -> torch.Tensor:
        return _centers(self.weight, self.k)  # row c*k + j -> [c, j]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.logits(embeddings)
        cos_m, sin_m, th, mm = (b.to(cosine.dtype)[labels].unsqueeze(1)
                                for b in (self.cos_m, self.sin_m, self.th, self.mm))
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=1e-7))
        phi = cosine * cos_m - sine * sin_m
        phi = torch.where(cosine > th, phi, cosine - mm)
        one_hot = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return F.cross_entropy(self.scale * (one_hot * phi + (1.0 - one_hot) * cosine), labels)


class ArcFace(SubCenterArcFace):
    """Additive angular margin m (radians) as a prediction layer + cross-entropy, with the hard-margin rule of
    SPEC 2: target logit cos(theta + m) where cos(theta) > cos(pi - m), else cos(theta) - sin(pi - m) * m. It is
    sub-center ArcFace with one center per class (k = 1) and one fixed margin; its state_dict is the weight alone,
    the margin coming from the config."""
    saves_margins = False

    def __init__(self, embedding_dim, num_classes, class_counts=None, s=30.0, m=0.2):
        super().__init__(embedding_dim, num_classes, class_counts, s=s, k=1, dynamic=False, m=m)


class SupCon(nn.Module):
    """Supervised contrastive loss on cosine similarity / temperature: pytorch-metric-learning's SupConLoss."""

    def __init__(self, embedding_dim, num_classes, class_counts=None, temperature=0.07):
        super().__init__()
        from pytorch_metric_learning.losses import SupConLoss

        self.loss = SupConLoss(temperature=temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(_f(embeddings), labels)


class Triplet(nn.Module):
    """Triplet margin loss with Euclidean distance between L2-normalised embeddings (pml's default LpDistance), so
    distances lie in [0, 2] and `margin` is in those units. With `miner`, TripletMarginMiner keeps the triplets
    with d(a,p) - d(a,n) + margin >= 0 and the loss averages the non-zero ones; a batch with none gives a zero
    loss that still has a grad_fn (pml returns sum(embeddings * 0))."""

    def __init__(self, embedding_dim, num_classes, class_counts=None, margin=0.02, miner=True):
        super().__init__()
        from pytorch_metric_learning.losses import TripletMarginLoss
        from pytorch_metric_learning.miners import TripletMarginMiner

        self.loss = TripletMarginLoss(margin=margin)
        self.miner = TripletMarginMiner(margin=margin, type_of_triplets="all") if miner else None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = _f(embeddings)
        triplets = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, triplets)


class LossTransform(nn.Module):
    """Seed 004's loss transform: head(emb, labels) + weight * a replica term. Replicas are contiguous groups of
    `replicas` rows (the repeated_aug sampler's layout); g(i) is row i's group.
    target "predictions" (the seed's, for classifier heads: those with `logits` and `scale`): p_i =
    softmax(scale * logits(e_i)), the head's own logit scale on its margin-free cosines, and the term is the seed's
    CCE against the replicas' mean prediction as a soft target, less that target's entropy so that agreeing replicas
    give exactly zero: mean_i KL(P_g(i) || p_i), P_g = mean of g's p_j, detached. The mean is a pseudo-label (seed
    004: "the average of the labels of all positive samples"): detached, the term moves each replica towards its
    group's consensus (its gradient in replica i's scaled logits is (p_i - P)/B, summing to zero over a group)
    instead of also pushing the consensus towards whatever is easiest to agree on.
    target "embeddings", and the fallback of "predictions" for heads without class predictions (the pair losses
    supcon, triplet): mean_i ||n_i - mean_{j in g(i)} n_j||_2, n the L2-normalised embeddings (unitless, in [0, 2]).
    `self.target` is the term in use. The inner head is `self.head` (callers strip the wrapper with
    getattr(head, "head", head)); `logits` exists only when the inner head has it."""

    TARGETS = ("predictions", "embeddings")

    def __init__(self, head, replicas, weight, target="predictions"):
        super().__init__()
        if target not in self.TARGETS:
            raise ValueError(f"target {target!r} is not one of {self.TARGETS}")
        self.head, self.replicas, self.weight = head, int(replicas), float(weight)
        classifier = hasattr(head, "logits") and hasattr(head, "scale")
        self.target = target if classifier else "embeddings"

    @property
    def logits(self) -> Callable[[torch.Tensor], torch.Tensor]:
        # a property rather than a copied bound method: it follows self.head (deepcopy, EMA, swaps), and its
        # AttributeError for pair losses makes hasattr(wrapper, "logits") False, as for the inner head
        return self.head.logits

    @property
    def class_centers(self) -> Callable[[], torch.Tensor]:
        return self.head.class_centers  # as logits: absent for pair losses

    def replica_term(self, embeddings: torch.Tensor) -> torch.Tensor:
        b = embeddings.shape[0]
        if b % self.replicas:
            raise ValueError(f"batch of {b} rows is not whole groups of {self.replicas} replicas")
        if self.target == "embeddings":
            n = F.normalize(_f(embeddings)).view(b // self.replicas, self.replicas, -1)
            return torch.linalg.vector_norm(n - n.mean(dim=1, keepdim=True), dim=2).mean()
        log_p = F.log_softmax(self.head.scale * self.head.logits(embeddings), dim=1)
        mean = log_p.exp().view(b // self.replicas, self.replicas, -1).mean(dim=1).detach()
        return F.kl_div(log_p, mean.repeat_interleave(self.replicas, dim=0), reduction="batchmean")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings, labels) + self.weight * self.replica_term(embeddings)


class LossStep(nn.Module):
    """One training step's loss, head(model(images), labels), as one module so DDP wraps model and head together.
    Under torchrun the head sees the whole global batch gathered from every rank (distributed.gather_batch), so
    margin heads, pair losses and LossTransform compute the one-process loss."""

    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(*gather_batch(self.model(images).float(), labels))


HEADS = {"arcface": ArcFace, "cosface": CosFace, "subcenter_arcface": SubCenterArcFace, "supcon": SupCon,
         "triplet": Triplet, "clip": ClipHead}


def build_head(cfg: dict, num_classes: int, class_counts: Sequence[int] | None = None) -> nn.Module:
    """The head named by cfg["head"], built from its own config section; wrapped in LossTransform when
    cfg["loss_transform"] > 0 (which needs sampler repeated_aug or m_per_class with repeats >= 2), its term on
    cfg["loss_transform_target"] (predictions: the embeddings' for pair losses, see LossTransform)."""
    from pipeline.core.errors import UserError

    name = cfg["head"]
    if name not in HEADS:
        raise UserError(f"unknown head '{name}' (known: {', '.join(HEADS)})")
    target = cfg.get("loss_transform_target", "predictions")  # checkpoints' configs from before the key lack it
    if target not in LossTransform.TARGETS:
        raise UserError(f"loss_transform_target={target!r} is not a target: set loss_transform_target="
                        f"{' or '.join(LossTransform.TARGETS)}")
    head = HEADS[name](cfg["embedding_dim"], num_classes, class_counts, **cfg.get(name, {}))
    weight = cfg.get("loss_transform", 0) or 0
    if weight > 0:
        sampler = cfg.get("sampler")
        repeats = (cfg.get(sampler) or {}).get("repeats", 1) if sampler in ("repeated_aug", "m_per_class") else 1
        if repeats < 2:
            raise UserError(f"loss_transform={weight} needs replicas in each batch: set sampler=repeated_aug (or "
                            f"m_per_class) with its repeats >= 2 (now sampler={sampler}, repeats={repeats}), "
                            f"or loss_transform=0")
        head = LossTransform(head, replicas=repeats, weight=weight, target=target)
    return head
