"""Run under torchrun with 2 processes (tests/test_distributed.py): every head's loss and gradients under DDP, each
rank holding half of one batch; rank 0 saves them to argv[1]. The builders are shared with the test."""
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.model.heads import HEADS, LossStep, LossTransform

NAMES = [*HEADS, "loss_transform", "loss_transform_embeddings"]
BATCH = 8
# a small text tower without dropout (each rank draws its own masks; the one-process loss draws one set)
SMALL = {"clip": dict(context=8, width=8, layers=1, heads=2, dropout=0.0, normalize=True, temperature=0.5)}


def head(name):
    torch.manual_seed(1)
    if name.startswith("loss_transform"):  # replicas in adjacent rows: split across ranks, whole again once gathered
        target = "embeddings" if name.endswith("embeddings") else "predictions"
        return LossTransform(HEADS["arcface"](6, 4), replicas=2, weight=0.5, target=target)
    return HEADS[name](6, 4, class_counts=[2, 2, 2, 2], **SMALL.get(name, {}))


def batch(name=""):
    """Images and labels; the clip head's labels are caption tokens, one distinct caption a row."""
    g = torch.Generator().manual_seed(0)
    if name == "clip":
        from pipeline.model.clip import tokenize

        y = torch.from_numpy(tokenize([f"photo {i} of hotel {i // 2}" for i in range(BATCH)], 8))
    else:
        y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return torch.randn(BATCH, 5, generator=g), y


def step(name):
    torch.manual_seed(0)
    return LossStep(nn.Linear(5, 6), head(name))


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run(name):
    from pipeline.core import distributed

    rank, world = distributed.rank(), distributed.world()
    module = step(name)
    ddp = distributed.wrap(module, "cpu")  # kept: its reducer must outlive the forward to average in backward
    x, y = batch(name)
    loss = ddp(x[rank::world], y[rank::world])
    loss.backward()
    return {"loss": loss.detach(), "grads": grads(module), "world": world}


def main(out):
    from pipeline.core import distributed

    distributed.init()
    results = {name: run(name) for name in NAMES}  # each DDP wrapper unreachable before finish()
    if distributed.is_main():
        torch.save(results, out)
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
