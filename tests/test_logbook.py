"""TensorBoard events of training (training/logbook.py), read back with tensorboard's own EventAccumulator: the
`trained` fixture's run folder holds the per-step loss and learning rates, every numeric metrics.csv cell of each
epoch and the retrieval picture; a resumed writer replaces what a killed run wrote after its last.pt; it is off by
config, and without the package it says so in one line."""
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pipeline.training.logbook import CELL, MATCHES, QUERIES, Logbook


def _events(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc


def test_a_training_run_writes_events_that_tensorboard_reads(trained):
    _, runs = trained
    run = runs / "a" / "fold0"
    acc = _events(run)
    metrics = pd.read_csv(run / "metrics.csv")
    last = int(metrics["step"].iloc[-1])
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "lr/backbone", "lr/neck", "lr/head"} <= scalars
    numeric = {c for c in metrics.columns if metrics[c].notna().any()} - {"epoch", "step"}
    assert {f"epoch/{c}" for c in numeric} <= scalars and "epoch/val_map5" in scalars
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, last + 1))
    (val,) = acc.Scalars("epoch/val_map5")
    assert val.step == last and abs(val.value - metrics["val_map5"].iloc[-1]) < 1e-6
    (image,) = acc.Images("val/retrievals")
    picture = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (QUERIES * (CELL + 16), (1 + MATCHES) * CELL, 3) and image.step == last
    frames = picture[[r * (CELL + 16) + 1 for r in range(QUERIES)]][:, CELL + 1::CELL, ::-1]  # each match's top edge
    assert all(tuple(px) in {(40, 200, 40), (220, 30, 30)} for px in frames.reshape(-1, 3))  # green or red


def _run(tmp_path, step, **cfg):
    """The part of the training loop's run a Logbook reads."""
    return SimpleNamespace(rank=0, cfg={"tensorboard": True, **cfg}, out=tmp_path, state={"step": step},
                           log=print, opt=SimpleNamespace(param_groups=[{"lr": 0.1, "name": "backbone"}]))


def test_a_resumed_writer_replaces_the_events_after_its_step(tmp_path):
    for start, stop, offset in ((0, 5, 1.0), (3, 5, 2.0)):  # killed at step 5, after last.pt of step 3
        run = _run(tmp_path, start)
        book = Logbook(run)
        while run.state["step"] < stop:
            book.step(offset + run.state["step"])
            run.state["step"] += 1
        book.epoch({"epoch": 1, "step": stop, "val_map5": offset / 4, "val_acc": "", "flag": True})
        book.close()
    acc = _events(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1), (2, 2), (3, 3), (4, 5), (5, 6)]
    assert [(e.step, e.value) for e in acc.Scalars("epoch/val_map5")] == [(5, 0.5)]
    assert sorted(acc.Tags()["scalars"]) == ["epoch/val_map5", "lr/backbone", "train/loss"]


def test_off_by_config_and_without_the_package(tmp_path, monkeypatch):
    Logbook(_run(tmp_path, 0, tensorboard=False)).close()
    assert list(tmp_path.iterdir()) == []
    lines = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as where the package is not installed
    run = _run(tmp_path, 0)
    run.log = lines.append
    book = Logbook(run)
    book.step(1.0), book.epoch({"val_map5": 0.5}), book.close()
    assert list(tmp_path.iterdir()) == [] and len(lines) == 1 and lines[0].startswith("tensorboard is not installed")
