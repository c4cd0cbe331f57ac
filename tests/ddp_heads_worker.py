"""Run under torchrun with 2 processes (tests/test_distributed.py): every head's loss and gradients under DDP, each
rank holding half of one batch; rank 0 saves them to argv[1]. The builders are shared with the test."""
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.model.heads import HEADS, LossStep, LossTransform  # noqa: E402

NAMES = [*HEADS, "loss_transform"]
BATCH = 8


def head(name):
    torch.manual_seed(1)
    if name == "loss_transform":  # replicas in adjacent rows: split across ranks, whole again once gathered
        return LossTransform(HEADS["arcface"](6, 4), replicas=2, weight=0.5)
    return HEADS[name](6, 4, class_counts=[2, 2, 2, 2])


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH, 5, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def step(name):
    torch.manual_seed(0)
    return LossStep(nn.Linear(5, 6), head(name))


def grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def run(name):
    from pipeline.training import distributed

    rank, world = distributed.rank(), distributed.world()
    module = step(name)
    ddp = distributed.wrap(module, "cpu")  # kept: its reducer must outlive the forward to average in backward
    x, y = batch()
    loss = ddp(x[rank::world], y[rank::world])
    loss.backward()
    return {"loss": loss.detach(), "grads": grads(module), "world": world}


def main(out):
    from pipeline.training import distributed

    distributed.init()
    results = {name: run(name) for name in NAMES}  # each DDP wrapper unreachable before finish()
    if distributed.is_main():
        torch.save(results, out)
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
