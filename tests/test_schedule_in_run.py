"""The learning-rate schedule and gradient accumulation in real training runs (training/loop.py): two tiny runs
on the same data order, batches of 4 with accum_steps=2 and batches of 8 with accum_steps=1. metrics.csv's lr
column and TensorBoard's rate of every optimiser step equal warm-up + cosine computed here; the two runs end
with the same weights (the schedule counts optimiser steps, and each accumulated batch adds loss / accum_steps)."""
import math

import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.config import load_config
from pipeline.data.folds import split
from pipeline.model.embedder import build_model

from conftest import tiny_overrides

# No BatchNorm and no dropout (a ViT with a linear neck), so 2 x 4 images are one batch of 8 up to float rounding;
# SGD (Adam turns float noise in an exactly-zero gradient into lr-sized steps); fold -1: no validation, every image
# trains. The schedule: 3 warm-up steps, then cosine to min_lr / lr = 0.1; the backbone at half the peak lr.
SAME = ["backbone=test_vit", "neck=linear", "neck_dropout=0", "optimizer=sgd", "fold=-1", "epochs=2", "lr=0.05",
        "scheduler=cosine", "min_lr=0.005", "warmup_steps=3", "lr_mult.backbone=0.5", "tensorboard=true"]
RUNS = {"accum": ["batch_size=4", "accum_steps=2"], "batch": ["batch_size=8", "accum_steps=1"]}
PEAK = {"backbone": 0.025, "neck": 0.05, "head": 0.05}  # lr x lr_mult of each parameter group
WARM, FLOOR = 3, 0.1


def _schedule(step, total):
    """The peak's factor after `step` optimiser steps of `total`: linear warm-up, then cosine down to FLOOR."""
    if step < WARM:
        return (step + 1) / WARM
    return FLOOR + (1 - FLOOR) * (1 + math.cos(math.pi * min(1.0, (step - WARM) / (total - WARM)))) / 2


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """{name: (config, run folder)} of the two runs, 2 epochs each."""
    from pipeline.training.loop import train

    out = {}
    for name, extra in RUNS.items():
        root = tmp_path_factory.mktemp(name)
        (root / "s.yaml").write_text("# schedule and accumulation\n")
        cfg = load_config(str(root / "s.yaml"), tiny_overrides(tiny_data, root, *SAME, *extra))
        out[name] = cfg, train(cfg, log=lambda *a: None)
    return out


def _steps_per_epoch(cfg):
    _, items, _, _ = split(cfg)
    return len(items) // (cfg["batch_size"] * cfg["accum_steps"])  # optimiser steps: 8 images each


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_lr_of_metrics_csv_and_of_every_step_follow_the_schedule(runs, name):
    cfg, run = runs[name]
    per_epoch = _steps_per_epoch(cfg)
    total = 2 * per_epoch
    assert per_epoch > WARM
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["step"].tolist() == [per_epoch, total]
    # an epoch's row: the backbone's rate after its last step, the one the next step would use (the floor at the end)
    want = [PEAK["backbone"] * _schedule(s, total) for s in (per_epoch, total)]
    assert metrics["lr"].tolist() == pytest.approx(want, rel=1e-12, abs=0)
    assert want[1] == pytest.approx(PEAK["backbone"] * FLOOR)
    # TensorBoard: optimiser step s (1-based) of each group at the rate of s - 1 steps done (float32 events)
    acc = EventAccumulator(str(run))
    acc.Reload()
    for group, peak in PEAK.items():
        got = [(e.step, e.value) for e in acc.Scalars(f"lr/{group}")]
        assert [s for s, _ in got] == list(range(1, total + 1))
        assert [v for _, v in got] == pytest.approx([peak * _schedule(s - 1, total) for s in range(1, total + 1)],
                                                    rel=1e-6)


def _weights(run):
    ck = torch.load(run / "last.pt", weights_only=True)
    return ck, {f"{part}.{k}": v.double() for part in ("model", "head") for k, v in ck[part].items()}


def test_two_accumulated_batches_of_4_train_as_one_batch_of_8(runs):
    (cfg, acc_run), (_, big_run) = runs["accum"], runs["batch"]
    (ca, a), (cb, b) = _weights(acc_run), _weights(big_run)
    assert ca["progress"]["step"] == cb["progress"]["step"] == 2 * _steps_per_epoch(cfg)
    assert a.keys() == b.keys() and len(a) > 20
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    # ... and the weights moved: the model as the run built it (its seed, then build_model), against the trained one
    torch.manual_seed(cfg["seed"])
    start = build_model(cfg)[0].state_dict()
    assert max((a[f"model.{k}"] - v.double()).abs().max().item() for k, v in start.items()) > 1e-2
    # the epochs' mean batch losses: the 4-image halves' mean is the 8-image batches' mean
    losses = [[r["train_loss"] for r in c["progress"]["history"]] for c in (ca, cb)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
