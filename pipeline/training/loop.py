"""The training loop: a config on one fold -> runs/<config>/fold<k>/ with config.yaml, last.pt, best.pt (ema.pt),
metrics.csv and curves.png. Batches come from the sampler registry, the loss from the head registry, the optimiser,
schedule and EMA from training/optimizers.py; validation (training/validation.py) scores the val fold against the
training images every val_every epochs. Under torchrun each process takes rows rank::N of the same global batches,
draws its own dropout masks and only rank 0 writes."""
import contextlib
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import torch

from pipeline.config import run_dir, save_config
from pipeline.core import checkpoint, distributed
from pipeline.core.device import amp_dtype, autocast, needs_scaler, pick_device, set_determinism
from pipeline.core.errors import UserError
from pipeline.core.io import write_table
from pipeline.core.progress import Progress
from pipeline.data import decode
from pipeline.data.dataset import ImageDataset, loader
from pipeline.data.folds import labelled, split
from pipeline.data.image_cache import image_reader
from pipeline.data.samplers import build_sampler
from pipeline.data.transforms import build_transform
from pipeline.model import heads
from pipeline.model.backbone import input_config
from pipeline.model.embedder import build_model
from pipeline.model.memory_format import use_channels_last
from pipeline.text.captions import text_data
from pipeline.training import logbook, validation
from pipeline.training.optimizers import check_clipping, clip_gradients, make_ema, make_optimizer
from pipeline.training.schedulers import Plateau, check_scheduler, check_size_schedule, image_size_at, lr_factor

if TYPE_CHECKING:
    import albumentations as A
    from timm.utils import ModelEmaV3

    from pipeline.data.image_cache import ImageReader
    from pipeline.data.layouts import Item
    from pipeline.model.embedder import Embedder
    from pipeline.text.captions import TextData

METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_map5", "ema_val_map5", "seconds",
                  "val_seconds", "images_per_sec"]


@dataclass
class _Run:
    """What the parts of one run share: the fold's data and plan (from _setup), the objects _build makes."""
    cfg: dict
    log: Callable[..., None]
    out: Path
    rank: int
    world: int
    device: str
    train_items: "list[Item]"
    val_items: "list[Item]"
    classes: list[str]
    codes: dict[str, int]
    labels: list[int]  # the training items' class codes
    steps_per_epoch: int
    batches_per_epoch: int
    gallery: "list[Item]" = field(default_factory=list)  # the training images validation ranks against
    text: "TextData | None" = None  # a clip run's caption targets and held-out captions
    model: "Embedder | None" = None
    head: "torch.nn.Module | None" = None
    inputs: dict = field(default_factory=dict)  # image_size, mean, std: what a checkpoint's user feeds the model
    base_size: int = 0  # image_size resolved; image_size_schedule may train an epoch at another
    tfms: "dict[str, A.Compose]" = field(default_factory=dict)
    reader: "ImageReader | None" = None  # the image cache or the source files
    fmt: "torch.memory_format" = torch.contiguous_format
    step_fn: "torch.nn.Module | None" = None  # heads.LossStep, wrapped in DDP under torchrun
    opt: "torch.optim.Optimizer | None" = None
    plateau: "Plateau | None" = None
    sched: "torch.optim.lr_scheduler.LambdaLR | None" = None
    ema: "ModelEmaV3 | None" = None
    scaler: "torch.amp.GradScaler | None" = None
    state: dict = field(default_factory=dict)  # the progress a checkpoint keeps and a resume restores
    book: "logbook.Logbook | None" = None  # the run's TensorBoard events
    config_saved: bool = False  # config.yaml written by this process (with its first checkpoint)


def _plan(cfg, labels, world=1):
    """(optimiser steps per epoch, batches per epoch): batches beyond a whole number of accumulations are unused."""
    accum = cfg["accum_steps"]
    batches = build_sampler(cfg, labels, 0, world=world).num_batches
    steps = batches // accum
    if steps == 0:
        raise UserError(f"an epoch has {batches} batches of {cfg['batch_size']}, fewer than accum_steps={accum}: "
                        "lower batch_size or accum_steps")
    return steps, steps * accum


def train(cfg: dict, resume: bool = False, log: Callable[..., None] = print) -> Path:
    """Run (or resume) training; returns the run folder. Its config.yaml is written with its first checkpoint, so a
    folder with one is a run; one that fails before its first last.pt is removed (nothing in it can be resumed or
    used: best.pt, if any, is an unfinished first epoch's), and a folder a SIGKILL left goes with the next failure."""
    run = _setup(cfg, log)
    try:
        _train(run, resume)
    except BaseException:
        if not run.rank and not (run.out / "last.pt").exists():
            shutil.rmtree(run.out, ignore_errors=True)
            with contextlib.suppress(OSError):
                run.out.parent.rmdir()  # runs/<config>/ too, when this fold was its only one
        raise
    return run.out


def _train(run, resume):
    cfg = run.cfg
    source = _build(run, resume)
    if resume:
        _resume(run)
    else:
        run.log(f"training {cfg['name']} fold {cfg['fold']}: {cfg['backbone']} ({source or 'random init'}), "
                f"{len(run.train_items)} train / {len(run.val_items)} val images, {len(run.classes)} classes, "
                f"{run.inputs['image_size']}px, {run.device}, {cfg['head']} head, {cfg['sampler']} batches, "
                f"{run.steps_per_epoch} steps/epoch" + (f", {run.world} processes" if run.world > 1 else "")
                + validation.plan(cfg, len(run.gallery), len(run.train_items)))
    run.book = logbook.Logbook(run)  # after a resume: it opens at the step the run goes on from
    while run.state["epoch"] < cfg["epochs"]:
        epoch, t0 = run.state["epoch"], time.time()
        _set_image_size(run, image_size_at(cfg, epoch, run.base_size))
        train_ds = ImageDataset(run.train_items, run.tfms["train"], run.codes, run.reader,
                                targets=run.text.targets if run.text else None)
        seen = _train_epoch(run, train_ds, t0)
        _end_epoch(run, epoch, t0, seen, train_seconds=time.time() - t0)
    run.book.close()


def _setup(cfg, log):
    """The fold's data and the checks that need no model: a bad config fails before a backbone is built."""
    rank, world = distributed.rank(), distributed.world()
    out = run_dir(cfg)
    ds, train_items, val_items, classes = split(cfg, distributed.main_only(log))
    text, train_items = text_data(cfg, ds, train_items, val_items, distributed.main_only(log))
    codes = {c: i for i, c in enumerate(classes)}
    labels = [codes[it.label] for it in train_items]
    check_scheduler(cfg)
    if cfg["nonfinite_loss"] not in ("stop", "skip"):
        raise UserError(f"nonfinite_loss={cfg['nonfinite_loss']!r}: use stop or skip")
    validation.check(cfg)
    check_clipping(cfg), check_size_schedule(cfg), decode.check(cfg)
    if cfg["device"] not in ("auto", "cuda", "cpu"):
        raise UserError(f"device={cfg['device']!r}: use auto, cuda or cpu (torchrun gives each process its GPU)")
    device = pick_device(cfg["device"], distributed.main_only(log))
    amp_dtype(device, cfg["amp_dtype"])  # a bad value, or bfloat16 on a card without it, fails before the model
    steps_per_epoch, batches_per_epoch = _plan(cfg, labels, world)
    own = labelled(train_items)  # validation's gallery: the competition's images (no pseudo-labels, no outside ones)
    per_class = validation.per_class(cfg, len(own))
    return _Run(cfg, distributed.main_only(log), out, rank, world, device, train_items, val_items,
                classes, codes, labels, steps_per_epoch, batches_per_epoch,
                gallery=validation.gallery(own, per_class, cfg["seed"]), text=text)


def _build(run, resume):
    """Model, head, transforms, optimiser, schedule, EMA, scaler and fresh progress; returns the weights' source.
    The seed goes right before build_model: its random init, then the head's, must repeat for the same seed (and
    on every rank); each rank's own stream for dropout starts after them."""
    cfg, device, n = run.cfg, run.device, len(run.classes)
    set_determinism(cfg["deterministic"])
    torch.manual_seed(cfg["seed"])
    init = cfg["init_from"] and not resume  # a resume's last.pt wins over init_from
    model, source = build_model(cfg, with_weights=not (resume or init))  # those load their own weights
    if cfg["sync_bn"] and run.world > 1:
        if device != "cuda":
            raise UserError("sync_bn=true needs CUDA (torch's SyncBatchNorm runs on GPUs only): set sync_bn=false "
                            "on the CPU, where a BatchNorm-free backbone and neck train exactly as one process")
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)  # same state_dict keys: checkpoints stay interchangeable
    run.model = model
    run.head = head = heads.build_head(cfg, n, np.bincount(run.labels, minlength=n).tolist())
    source = checkpoint.init_from(model, head, cfg["init_from"], run.classes, run.log) if init else source
    distributed.seed_rank(cfg["seed"])
    size, mean, std = input_config(cfg, model.backbone)
    run.base_size, run.inputs = size, {"image_size": size, "mean": list(mean), "std": list(std)}
    if cfg["grad_checkpointing"]:
        _grad_checkpointing(model, cfg)
    model.to(device), head.to(device)
    last = distributed.broadcast(use_channels_last(cfg, model, device, image_size_at(cfg, cfg["epochs"] - 1, size),
                                                   cfg["batch_size"] // run.world, run.log))  # every rank alike
    run.fmt = torch.channels_last if last else torch.contiguous_format
    model.to(memory_format=run.fmt)
    run.step_fn = distributed.wrap(heads.LossStep(model, head), device)
    run.opt = make_optimizer(cfg, model, head)
    run.plateau = plateau = Plateau(cfg)
    total = run.steps_per_epoch * cfg["epochs"]
    # the schedule's factor times the plateau cut, read each step: a resume swaps plateau.state, not plateau
    run.sched = torch.optim.lr_scheduler.LambdaLR(run.opt, lambda s: lr_factor(cfg, s, total) * plateau.scale)
    run.ema = make_ema(cfg, model)
    if cfg["compile"]:  # in place, after the EMA's copy: state_dict keys stay the plain module's
        model.compile()
    run.scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler(device, cfg["amp"], cfg["amp_dtype"]))
    run.state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "best_selected": -1.0, "history": [],
                 "plateau": plateau.state}
    return source


def _grad_checkpointing(model, cfg):
    """timm's set_grad_checkpointing on the backbone: its blocks' activations recomputed in backward."""
    try:
        model.backbone.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError):
        raise UserError(f"grad_checkpointing: timm's {cfg['backbone']} does not support it; set "
                        "grad_checkpointing=false (or lower batch_size and raise accum_steps)") from None


def _set_image_size(run, size):
    """The epoch's training size (image_size_schedule): transforms and image reader rebuilt when it changes;
    checkpoints then record it as the size to embed at. Validation embeds at the same size."""
    if run.tfms and run.inputs["image_size"] == size:
        return
    if run.tfms:
        run.log(f"image size {run.inputs['image_size']} -> {size} px from epoch {run.state['epoch'] + 1}")
    run.inputs["image_size"] = size
    run.tfms = {k: build_transform(k, run.cfg, size) for k in ("train", "val", "test")}
    run.reader = image_reader(run.cfg, size, {"train": run.train_items + run.val_items}, run.log)


def _resume(run):
    """Weights, optimiser, schedule, EMA, AMP scaler, progress and each rank's RNG streams from last.pt: the rest is
    an unbroken run's. Files from before the scaler and per-rank streams were kept resume as they always did."""
    ck = checkpoint.load(run.out / "last.pt", run.cfg, checkpoint.RESUME_ENTRIES)
    if ck["classes"] != run.classes:
        raise UserError(f"{run.out / 'last.pt'} was trained on other classes than {run.cfg['data']}: start afresh")
    run.model.load_state_dict(ck["model"]), run.head.load_state_dict(ck["head"])
    run.opt.load_state_dict(ck["optimizer"]), run.sched.load_state_dict(ck["scheduler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(ck["ema"])
    state = run.state
    state.update(ck["progress"])
    if "best_map5" in state:  # the best of select_on, under the name last.pt files gave it before select_on
        state["best_selected"] = state.pop("best_map5")
    run.plateau.state = state["plateau"]  # one dict: the plateau's updates land in the checkpointed progress
    checkpoint.restore_scaler(run.scaler, ck.get("scaler"))
    checkpoint.restore_rng(ck["rng"], run.rank, run.device)
    run.log(f"resuming {run.out} at epoch {state['epoch'] + 1}, batch {state['batch']} (step {state['step']})")


def _snapshot(run, kind="last"):
    """<kind>.pt from rank 0; only last.pt carries what a resume needs (optimiser, schedule, scaler, EMA, the RNG
    streams of every rank: gathered, so every rank calls this)."""
    streams = distributed.gather(checkpoint.rng_state(run.device)) if kind == "last" else None
    if run.rank:
        return
    weights = run.ema.module if kind == "ema" else run.model
    if not all(torch.isfinite(p).all() for p in weights.parameters()):  # never overwrite a good state
        raise UserError(f"the weights became NaN/inf by step {run.state['step']}; {_kept(run, kind)}")
    if not run.config_saved:  # with the first checkpoint of this process: the folder is a run from now on
        save_config(run.cfg, run.out / "config.yaml")
        run.config_saved = True
    ck = {"model": weights.state_dict(), "head": run.head.state_dict(), "config": run.cfg, "classes": run.classes,
          "progress": dict(run.state), **run.inputs}
    if kind == "last":
        ck.update(optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(), scaler=run.scaler.state_dict(),
                  rng=streams)
        if run.ema is not None:
            ck["ema"] = run.ema.module.state_dict()
    checkpoint.save(ck, run.out / f"{kind}.pt")


def _kept(run, kind, check=""):
    """What a stop for non-finite numbers leaves to go on from: the checkpoint, or none yet."""
    path = run.out / f"{kind}.pt"
    if path.exists():
        return f"{path} keeps the last good state: lower lr {check}then --resume"
    return f"no checkpoint was written yet: lower lr {check}and train again"


def _train_epoch(run, train_ds, t0):
    """The epoch's remaining batches (a resume may start mid-epoch), an optimiser step every accum_steps of them;
    returns the images seen over all ranks."""
    cfg, state, epoch = run.cfg, run.state, run.state["epoch"]
    sampler = build_sampler(cfg, run.labels, epoch, start=state["batch"], rank=run.rank, world=run.world)
    dl = loader(train_ds, batch_sampler=sampler, num_workers=cfg["num_workers"], device=run.device)
    run.model.train(), run.head.train()
    seen, todo = 0, run.batches_per_epoch - state["batch"]
    bar = Progress(run.batches_per_epoch, f"epoch {epoch + 1}/{cfg['epochs']}", "batches", run.log,
                   itertools.islice(dl, todo), done=state["batch"], final=False, enabled=not run.rank)
    for x, y in bar:
        x, y = x.to(run.device, non_blocking=True).contiguous(memory_format=run.fmt), y.to(run.device)
        loss = _backward(run, x, y)
        state["batch"] += 1
        seen += len(x) * run.world
        bar.note = f"loss {loss.item():.3f}, {seen / (time.time() - t0):.0f} img/s"
        if state["batch"] % cfg["accum_steps"]:
            continue
        run.book.step(loss.item())  # before the schedule moves on: the rates this step uses
        if cfg["clip_grad"]:
            run.scaler.unscale_(run.opt)  # clip the true gradients, not the loss-scaled ones
            clip_gradients(cfg, run.model, run.head)
        run.scaler.step(run.opt), run.scaler.update(), run.sched.step(), run.opt.zero_grad(set_to_none=True)
        state["step"] += 1
        if run.ema is not None:
            run.ema.update(run.model, step=state["step"])
        if cfg["save_every_steps"] and state["step"] % cfg["save_every_steps"] == 0:
            _snapshot(run)
    return seen


def _backward(run, x, y):
    """One batch's forward and backward; returns its loss. A non-finite loss stops the run or skips the batch
    (nonfinite_loss); CUDA out of memory becomes a one-line hint."""
    cfg, state = run.cfg, run.state
    try:
        last_of_step = (state["batch"] + 1) % cfg["accum_steps"] == 0  # DDP all-reduces on that batch only
        with autocast(run.device, cfg["amp"], cfg["amp_dtype"]), distributed.sync_gradients(run.step_fn, last_of_step):
            loss = run.step_fn(x, y)
        if not torch.isfinite(loss):
            if cfg["nonfinite_loss"] != "skip":
                kept = _kept(run, "last", "or check the data, ")
                raise UserError(f"loss became {loss.item()} at step {state['step'] + 1}; {kept} (or set "
                                "nonfinite_loss=skip)")
            state["skipped"] = state.get("skipped", 0) + 1  # the batch adds no gradient
            if run.world > 1:  # DDP waits for this batch's gradients on every rank: reduce zeros
                (sum(p.sum() for p in run.step_fn.parameters()) * 0.0).backward()
            run.log(f"step {state['step'] + 1}: loss {loss.item()}, batch skipped ({state['skipped']} so far)")
        else:
            run.scaler.scale(loss / cfg["accum_steps"]).backward()
            state["loss_sum"] += loss.item()
    except torch.cuda.OutOfMemoryError:
        bs, acc = cfg["batch_size"], cfg["accum_steps"]
        raise UserError(f"CUDA out of memory at batch_size={bs}: try batch_size={max(1, bs // 2)} "
                        f"accum_steps={acc * 2} (the same effective batch) or a smaller image_size; "
                        "last.pt keeps the last saved state (--resume continues from it)") from None
    return loss


def _end_epoch(run, epoch, t0, seen, train_seconds):
    """Validation (and the EMA's), the plateau cut, metrics.csv + curves.png, the snapshots and the epoch's line."""
    from pipeline.reports.plots import training_curves

    cfg, state, opt = run.cfg, run.state, run.opt
    validated = validation.due(cfg, epoch)
    metrics = validation.validate(run, keep=run.book.shown) if validated else {}
    pick, cols = cfg["select_on"], METRIC_COLUMNS + list(validation.TEXT_COLUMNS if run.text else ())
    if run.plateau.step(metrics.get(pick)):  # an epoch without validation counts for nothing (patience)
        total = run.steps_per_epoch * cfg["epochs"]
        for g in opt.param_groups:  # the cut applies from the next step, not one step late
            g["lr"] = g["initial_lr"] * lr_factor(cfg, run.sched.last_epoch, total) * run.plateau.scale
        run.log(f"{pick} plateaued: learning rates x{run.plateau.scale:.3g} of schedule")
    row = {"epoch": epoch + 1, "step": state["step"], "lr": opt.param_groups[0]["lr"],
           "train_loss": state["loss_sum"] / run.batches_per_epoch, "seconds": round(time.time() - t0, 2),
           "images_per_sec": round(seen / max(train_seconds, 1e-9), 1)}
    row.update(validation.columns(metrics))
    state["history"].append({k: row[k] for k in cols})
    state.update(epoch=epoch + 1, batch=0, loss_sum=0.0)
    # without a val fold every epoch is the best; without validation this epoch, none is
    is_best = not run.val_items or (validated and metrics[pick] > state["best_selected"])
    if is_best:
        state["best_selected"] = metrics.get(pick, 0.0)  # the best value of select_on so far
    if not run.rank:
        write_table(run.out / "metrics.csv", pd.DataFrame(state["history"], columns=cols))
        training_curves([{k: str(v) for k, v in r.items()} for r in state["history"]], run.out / "curves.png",
                        f"{cfg['name']} fold {cfg['fold']}")
    run.book.epoch(row)  # before last.pt: a resume purges the events after its step, not this epoch's
    # last.pt, the resume point, goes last: killed before it, a resume redoes this epoch's end (best, ema)
    if is_best:
        _snapshot(run, "best")
    if run.ema is not None:
        _snapshot(run, "ema")
    _snapshot(run)
    run.log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.4f}, "
            f"{validation.describe(metrics if validated else None, cfg, row['seconds'])}, "
            f"{row['images_per_sec']} img/s, {row['seconds']}s")

