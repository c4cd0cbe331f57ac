"""Query orientation (SPEC 1: photos arrive turned 90, 180 or 270 degrees; Hotel-ID 2021 1st and 2022 2nd
straightened them): rotation TTA's merge of the four rotations' rankings, and a self-supervised rotation classifier,
the Orienter, that turns each query view back upright before it is embedded (retrieval/forward.py's rotation= and
orient=). Rotations are counted as torch.rot90(x, k, (2, 3)) of a (N, C, S, S) batch, k = 0..3 quarter turns."""
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from pipeline.data.image_cache import ImageReader
    from pipeline.data.layouts import Item
    from pipeline.model.embedder import Embedder

ROTATIONS = 4
FILE = "orientation.pt"
_VERSION = 1  # of the saved head: bump when what it is trained on changes
_HELD_OUT = 0.1  # share of the chosen images whose four views only measure the head
_WEIGHT_DECAY = 1e-2  # L2 on the head's weights (demo, lite0: 1e-2 read best of 3e-3, 1e-2, 3e-2)


def merge_rotations(codes: list, scores: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotation TTA, "the best of the four rotations' similarities": codes[r], scores[r] are rank()'s (Q, k_r)
    top classes and scores of the queries turned r quarter turns (retrieval/rank.py's conventions: score
    descending, ties -> smaller class code, -1 / -inf padding). Returns (codes (Q, k) int64, scores (Q, k) float32):
    per query the k classes of largest max-over-rotations score M(c) = max_r s_r(c), in the same order, padded the
    same way.

    Merging each rotation's top k is exact. Order (score, code) pairs by score descending then code ascending (a
    total order, rank()'s). Let c be in the true top k of M and r* a rotation with s_r*(c) = M(c). If c were not in
    r*'s top k, k classes d would precede c there, and M(d) >= s_r*(d) puts each ahead of (M(c), c) as well: k
    classes ahead of c, a contradiction. So every true top-k class appears in some list with its exact M(c). A class
    listed with less than its M is not in the true top k, and its listed score <= M ranks it below all of them. So
    the top k of the per-class max over the lists' union are the true top k with their true scores."""
    if not codes or len(codes) != len(scores):
        raise UserError(f"merge_rotations: {len(codes)} code array(s) but {len(scores)} score array(s); give one "
                        "of each per rotation")
    c = np.concatenate([np.asarray(a, np.int64) for a in codes], axis=1)
    s = np.concatenate([np.asarray(a, np.float32) for a in scores], axis=1)
    if c.shape != s.shape:
        raise UserError(f"merge_rotations: codes {c.shape} and scores {s.shape} differ in shape")
    Q, n = c.shape
    rows = np.arange(Q)[:, None]
    valid = c >= 0
    # per row: by class, best score first; the first entry of each class's run is its max over the rotations
    order = np.lexsort((-s, np.where(valid, c, np.iinfo(np.int64).max)), axis=1)
    cs, ss, vs = c[rows, order], s[rows, order], valid[rows, order]
    first = np.ones((Q, n), bool)
    first[:, 1:] = cs[:, 1:] != cs[:, :-1]
    keep = vs & first
    top = np.lexsort((cs, -ss, ~keep), axis=1)[:, :k]  # kept first, then score descending, then smaller code
    out_c = np.full((Q, k), -1, np.int64)
    out_s = np.full((Q, k), -np.inf, np.float32)
    m = min(k, n)
    kept = keep[rows, top]
    out_c[:, :m] = np.where(kept, cs[rows, top], -1)
    out_s[:, :m] = np.where(kept, ss[rows, top], -np.inf)
    return out_c, out_s


def unrotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """x (N, C, S, S) with sample i turned back by turns[i] quarter turns (torch.rot90 by -turns[i])."""
    out = x.clone()
    for r in range(1, ROTATIONS):
        idx = (turns == r).nonzero().flatten()
        if len(idx):
            out[idx] = torch.rot90(x[idx], -r, (2, 3))
    return out


def view_features(model: "Embedder", x: torch.Tensor) -> torch.Tensor:
    """(N, 4, D) float32: the pooled backbone features (Embedder.features) of each sample turned v = 0..3 quarter
    turns, on x's device."""
    return torch.stack([model.features(torch.rot90(x, v, (2, 3)).contiguous()).float() for v in range(ROTATIONS)], 1)


class Orienter(nn.Module):
    """A linear head on the frozen model's pooled backbone features, standardised, that scores how many quarter
    turns a view was rotated by; forward(x) returns x with each sample turned back upright.

    A view is judged from its four turns jointly: if x is the upright photo turned r times, its turn v is turned
    v + r times, so r = argmax_r sum_v log p(v + r | features of turn v). One view alone is ambiguous between 90
    and 270 degrees: pooled features barely change under a horizontal mirror (ImageNet and our training both flip
    images), and a mirror maps a photo turned 90 degrees onto one turned 270; the 0 vs 180 reading of the other
    two turns settles it (demo, lite0: 77% of single views right, 97% of photos by the joint reading). The price:
    four backbone passes per view besides its embedding pass. The head (and its standardisation) is this
    module's whole state: the model is the run's, saved in its checkpoint."""

    def __init__(self, model: "Embedder", dim: int):
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule: kept out of state_dict() and .to()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.linear = nn.Linear(dim, ROTATIONS)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Per-view rotation logits of features (..., D)."""
        return self.linear((feats.float() - self.mean) / self.scale)

    def turns(self, views: torch.Tensor) -> torch.Tensor:
        """(N,) int64: the quarter turns each sample carries, from its view_features (N, 4, D) jointly."""
        logp = F.log_softmax(self.logits(views), -1)  # (N, view v, turns of view v)
        v = torch.arange(ROTATIONS, device=logp.device)
        return torch.stack([logp[:, v, (v + r) % ROTATIONS].sum(1) for r in range(ROTATIONS)], 1).argmax(1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted quarter turns (N,) int64 of a batch of uint8 views (N, C, S, S)."""
        return self.turns(view_features(self.model, x))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unrotate(x, self.predict(x))


@torch.no_grad()
def rotated_features(model: "Embedder", items: "list[Item]", transform, cfg: dict, device: str,
                     reader: "ImageReader | None" = None) -> torch.Tensor:
    """float32 (n, 4, D) on the CPU: view_features of each item's view (sample i seeded with i; batches of
    eval_batch_size; under autocast, as embedding runs)."""
    from pipeline.core.device import autocast
    from pipeline.data.dataset import ImageDataset, loader

    model.eval()
    size = cfg["eval_batch_size"]
    batches = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
    dl = loader(ImageDataset(items, transform, None, reader), batch_sampler=batches, num_workers=cfg["num_workers"],
                device=device)
    out = []
    for x, _ in dl:
        with autocast(device, cfg["amp"], cfg["amp_dtype"]):
            out.append(view_features(model, x.to(device, non_blocking=True)).cpu())
    return torch.cat(out) if out else torch.zeros(0, ROTATIONS, 0)


def _fit(head: Orienter, views: torch.Tensor, steps: int) -> None:
    """Full-batch LBFGS on (n, 4, D) view features whose view v is labelled v: cross-entropy + L2 on the weights,
    from zero (the loss is strictly convex: one optimum, whatever the start)."""
    x = views.reshape(-1, views.shape[-1])
    y = torch.arange(ROTATIONS).repeat(len(views))
    head.mean.copy_(x.mean(0))
    head.scale.copy_(x.std(0).clamp_min(1e-6))
    nn.init.zeros_(head.linear.weight)
    nn.init.zeros_(head.linear.bias)
    opt = torch.optim.LBFGS(head.linear.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head.logits(x), y) + _WEIGHT_DECAY * head.linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)


@torch.no_grad()
def _accuracy(head: Orienter, views: torch.Tensor) -> float:
    """Share of images whose joint reading is "upright": then each of its turns k reads as k, the nominal label."""
    return float((head.turns(views) == 0).float().mean()) if len(views) else float("nan")


@torch.no_grad()
def _view_accuracy(head: Orienter, views: torch.Tensor) -> float:
    """Share of single views read as their nominal turns."""
    pred = head.logits(views).argmax(-1)
    return float((pred == torch.arange(ROTATIONS)).float().mean()) if len(views) else float("nan")


def train_orienter(model: "Embedder", items: "list[Item]", reader: "ImageReader | None", cfg: dict, device: str,
                   seed: int, images: int = 2000, log=print, size: int = 0, steps: int = 300) -> tuple[Orienter, float]:
    """(Orienter on `device`, its held-out accuracy). Self-supervised: at most `images` of the items (a seeded
    choice), through the test pipeline at `size` px (0: the model's input size from cfg), each turned 0..3 quarter
    turns and labelled by it; 10% of the images held out; the head fitted by full-batch LBFGS (at most `steps`
    iterations) on the CPU, deterministic. The accuracy is the Orienter's own (the joint reading): the share of
    the held-out images' turns k read as k.

    Label noise: some photos are rotated themselves (9% of the demo's), so all four of their turns carry labels off
    by the same amount. After a first fit each training image's own turns are read jointly; the images read as
    rotated are dropped and the head refitted on the rest (demo, lite0: it finds 91% of the rotated photos at 92%
    precision, and lifts the true joint accuracy from 0.944 to 0.969). The held-out images are not cleaned, so the
    accuracy is against the nominal labels: a rotated held-out photo counts as wrong when the head reads it right,
    and the share of upright photos (about 0.91 on the demo) is its ceiling."""
    from pipeline.data.transforms import build_transform
    from pipeline.model.backbone import input_config

    if len(items) < 2:
        raise UserError(f"orientation: {len(items)} training image(s); the rotation head needs at least 2")
    t0 = time.time()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(items), min(int(images), len(items)), replace=False))
    held = np.zeros(len(chosen), bool)
    held[rng.permutation(len(chosen))[:max(1, round(_HELD_OUT * len(chosen)))]] = True
    size = size or input_config(cfg, model.backbone)[0]
    views = rotated_features(model, [items[i] for i in chosen], build_transform("test", cfg, size), cfg, device,
                             reader)
    train, test = views[torch.from_numpy(~held)], views[torch.from_numpy(held)]
    t1 = time.time()
    head = Orienter(model, views.shape[-1])
    _fit(head, train, steps)
    with torch.no_grad():
        upright = head.turns(train) == 0
    if upright.any():  # else the first fit is all there is
        _fit(head, train[upright], steps)
    acc = _accuracy(head, test)
    log(f"orientation head: {len(train)} images x 4 turns ({int((~upright).sum())} read as rotated themselves, "
        f"dropped), {size}px, {views.shape[-1]} features; held-out accuracy {acc:.4f} over {len(test)} images "
        f"(single views {_view_accuracy(head, test):.4f}); features {t1 - t0:.1f}s, fit {time.time() - t1:.1f}s")
    return head.to(device), acc


def _saved(path: Path, ck_hash: str, log) -> dict | None:
    """The saved head's state when it was trained for this checkpoint; None when missing, stale or unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception as e:  # an unreadable file is retrained over, as a stale one is
        log(f"orientation head: {path} unreadable ({type(e).__name__}); training a new one")
        state = None
    return state if state and state.get("version") == _VERSION and state.get("checkpoint_sha256") == ck_hash else None


def has_orienter(run_dir: str | Path, ck_hash: str) -> bool:
    """Whether run_dir holds the rotation classifier of this checkpoint (ck_hash, its content hash)."""
    return _saved(Path(run_dir) / FILE, ck_hash, lambda *a: None) is not None


def load_orienter(model: "Embedder", run_dir: str | Path, ck_hash: str, device: str, log=print) -> Orienter | None:
    """run_dir/orientation.pt as an Orienter on model's features when it was trained for this checkpoint (ck_hash,
    its content hash); None when it is missing, stale or unreadable."""
    path = Path(run_dir) / FILE
    state = _saved(path, ck_hash, log)
    if state is None:
        return None
    head = Orienter(model, state["dim"])
    head.load_state_dict(state["head"])
    log(f"orientation head: {path} (held-out accuracy {state['accuracy']:.4f})")
    return head.to(device)


def ensure_orienter(cfg: dict, model: "Embedder", items: "list[Item]", reader: "ImageReader | None", device: str,
                    run_dir: str | Path, ck_hash: str, log=print, size: int = 0) -> Orienter:
    """The run's Orienter: load_orienter's when it was trained for this checkpoint, else trained on the items
    (train_orienter, seeded with cfg's seed) and saved atomically as run_dir/orientation.pt."""
    from pipeline.core import checkpoint

    head = load_orienter(model, run_dir, ck_hash, device, log)
    if head is not None:
        return head
    head, acc = train_orienter(model, items, reader, cfg, device, cfg["seed"], log=log, size=size)
    path = Path(run_dir) / FILE
    checkpoint.save({"version": _VERSION, "checkpoint_sha256": ck_hash, "dim": head.linear.in_features,
                     "accuracy": acc, "head": {k: v.cpu() for k, v in head.state_dict().items()}}, path)
    log(f"orientation head: saved {path} (held-out accuracy {acc:.4f})")
    return head
