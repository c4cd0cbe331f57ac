"""Train a config on one fold: runs/<config>/fold<k>/ gets config.yaml, last.pt, best.pt, metrics.csv, curves.png.

Batches come from the sampler registry (pipeline/data/samplers.py), the loss from the head registry
(pipeline/heads.py), optimiser/scheduler/EMA from pipeline/optim.py. With ema > 0, ema.pt holds the averaged weights.

Validation each epoch: loss and accuracy of the head (accuracy only for classifier heads), and MAP@5 of the validation images (val pipeline:
with the red test-like hole) against the training images (test pipeline) as gallery. --resume continues
from last.pt (weights, optimiser, scheduler, epoch, position in the epoch, RNG).

--nproc N trains under torchrun with N processes (DDP; one GPU each, or gloo on the CPU). batch_size stays the
global batch: each process takes rows rank::N of the same batches, and the loss is computed on the whole
gathered batch, so N processes follow the one-process run (exactly, up to float rounding, for a model without
BatchNorm or with sync_bn=true on CUDA). Only rank 0 writes; --resume works with any N.

example: ./run.sh train m1 --data data/demo --fold 0 epochs=2 batch_size=8
         ./run.sh train m1 --nproc 4 sync_bn=true"""
import itertools
import sys
import time

from .errors import UserError

METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_map5", "ema_val_map5", "seconds",
                  "images_per_sec"]


def add_arguments(p):
    p.add_argument("config", help="config name in pipeline/configs (m1 ... m7) or a .yaml path")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--fold", type=int, help="validation fold (default: the config's, 0)")
    p.add_argument("--resume", action="store_true", help="continue from last.pt of this run")
    p.add_argument("--nproc", type=int, metavar="N", help="processes (GPUs) under torchrun; default 1")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=2 arcface.m=0.3")


def run(args):
    from .config import load_config
    from .distributed import run_stage

    cfg = load_config(args.config, args.overrides, data=args.data, fold=args.fold)  # config errors before launching
    run_stage(args.nproc, args._argv, lambda: train(cfg, resume=args.resume))


def split(cfg):
    """(dataset, train items, val items, classes) for the config's data and fold."""
    from .data.layouts import load_dataset
    from .folds import read_folds

    ds = load_dataset(cfg["data"], cfg)
    folds = read_folds(cfg["folds_file"], ds)
    train_items = [it for it in ds.train if folds[it.image_id] != cfg["fold"]]
    val_items = [it for it in ds.train if folds[it.image_id] == cfg["fold"]]
    return ds, train_items, val_items, ds.classes


def evaluate(model, head, train_items, val_items, classes, codes, tfms, cfg, device):
    """Validation metrics, the same on every rank (each embeds its share; rank 0 scores)."""
    from .distributed import broadcast
    from .inference import embed_items
    from .retrieval import map5

    if not val_items:
        return {}
    q, stats = embed_items(model, val_items, tfms["val"], cfg, device, head=head, codes=codes)
    g, _ = embed_items(model, train_items, tfms["test"], cfg, device)
    metrics = None
    if q is not None:
        score = map5([q], [it.label for it in val_items], [g], [it.label for it in train_items], classes,
                     max_memory=cfg["max_memory"], log=lambda *a: None)
        metrics = {"val_loss": stats["loss"], "val_acc": stats["acc"], "val_map5": score}
    return broadcast(metrics)


def _plan(cfg, labels, world=1):
    """(optimiser steps per epoch, batches per epoch): batches beyond a whole number of accumulations are unused."""
    from .data.samplers import build_sampler

    accum = cfg["accum_steps"]
    if accum < 1:
        raise UserError(f"accum_steps={accum}: must be 1 or more")
    batches = build_sampler(cfg, labels, 0, world=world).num_batches
    steps = batches // accum
    if steps == 0:
        raise UserError(f"an epoch has {batches} batches of {cfg['batch_size']}, fewer than accum_steps={accum}: "
                        "lower batch_size or accum_steps")
    return steps, steps * accum


def train(cfg, resume=False, log=print):
    """Run (or resume) training; returns the run folder."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from . import checkpoint, distributed
    from .config import run_dir, save_config
    from .data.dataset import ImageDataset, loader
    from .data.samplers import build_sampler
    from .data.transforms import build_transform
    from .heads import LossStep, build_head
    from .inference import autocast, pick_device
    from .io import write_csv
    from .model import build_model, input_config
    from .optim import Plateau, check_scheduler, lr_factor, make_ema, make_optimizer
    from .plots import training_curves

    rank, world = distributed.rank(), distributed.world()
    log = distributed.main_only(log)
    out = run_dir(cfg)
    ds, train_items, val_items, classes = split(cfg)
    codes = {c: i for i, c in enumerate(classes)}
    labels = [codes[it.label] for it in train_items]
    check_scheduler(cfg)
    if cfg["nonfinite_loss"] not in ("stop", "skip"):
        raise UserError(f"nonfinite_loss={cfg['nonfinite_loss']!r}: use stop or skip")
    steps_per_epoch, batches_per_epoch = _plan(cfg, labels, world)
    total = steps_per_epoch * cfg["epochs"]
    device = pick_device()
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg["seed"])
    model, source = build_model(cfg, with_weights=not resume)
    if cfg["sync_bn"] and world > 1:
        if device != "cuda":
            raise UserError("sync_bn=true needs CUDA (torch's SyncBatchNorm runs on GPUs only): set sync_bn=false "
                            "on the CPU, where a BatchNorm-free backbone and neck train exactly as one process")
        from timm.layers import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)  # same state_dict keys: checkpoints stay interchangeable
    head = build_head(cfg, len(classes), np.bincount(labels, minlength=len(classes)).tolist())
    eval_head = getattr(head, "head", head)  # validation batches hold no replicas: LossTransform's term is moot
    size, mean, std = input_config(cfg, model.backbone)
    tfms = {k: build_transform(k, cfg, size, mean, std) for k in ("train", "val", "test")}
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device, memory_format=fmt), head.to(device)
    step_fn = distributed.wrap(LossStep(model, head), device)
    opt = make_optimizer(cfg, model, head)
    plateau = Plateau(cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total) * plateau.scale)
    ema = make_ema(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] and device == "cuda")
    state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "best_map5": -1.0, "history": [],
             "plateau": plateau.state}
    if resume:
        ck = checkpoint.load(out / "last.pt", cfg)
        if ck["classes"] != classes:
            raise UserError(f"{out / 'last.pt'} was trained on other classes than {cfg['data']}: start afresh")
        model.load_state_dict(ck["model"]), head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"]), sched.load_state_dict(ck["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(ck["ema"])
        state.update(ck["progress"])
        plateau.state = state["plateau"]
        torch.set_rng_state(ck["rng"])
        log(f"resuming {out} at epoch {state['epoch'] + 1}, batch {state['batch']} (step {state['step']})")
    else:
        log(f"training {cfg['name']} fold {cfg['fold']}: {cfg['backbone']} ({source or 'random init'}), "
            f"{len(train_items)} train / {len(val_items)} val images, {len(classes)} classes, {size}px, {device}, "
            f"{cfg['head']} head, {cfg['sampler']} batches, {steps_per_epoch} steps/epoch"
            + (f", {world} processes" if world > 1 else ""))
    if not rank:
        save_config(cfg, out / "config.yaml")

    def snapshot(kind="last"):
        if rank:
            return
        weights = ema.module if kind == "ema" else model
        if not all(torch.isfinite(p).all() for p in weights.parameters()):  # never overwrite a good state
            raise UserError(f"the weights became NaN/inf by step {state['step']}; {out / kind}.pt keeps the last "
                            "good state: lower lr, then --resume")
        ck = {"model": weights.state_dict(), "head": head.state_dict(), "config": cfg, "classes": classes,
              "progress": dict(state), "image_size": size, "mean": list(mean), "std": list(std)}
        if kind == "last":
            ck.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=torch.get_rng_state())
            if ema is not None:
                ck["ema"] = ema.module.state_dict()
        checkpoint.save(ck, out / f"{kind}.pt")

    train_ds = ImageDataset(train_items, tfms["train"], codes)
    while state["epoch"] < cfg["epochs"]:
        epoch, t0 = state["epoch"], time.time()
        sampler = build_sampler(cfg, labels, epoch, start=state["batch"], rank=rank, world=world)
        dl = loader(train_ds, batch_sampler=sampler, num_workers=cfg["num_workers"], device=device)
        model.train(), head.train()
        seen, todo = 0, batches_per_epoch - state["batch"]
        bar = tqdm(itertools.islice(dl, todo), total=todo, desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                   disable=rank or not sys.stderr.isatty(), file=sys.stderr)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device)
            try:
                last_of_step = (state["batch"] + 1) % cfg["accum_steps"] == 0
                with autocast(device, cfg["amp"]), distributed.sync_gradients(step_fn, last_of_step):
                    loss = step_fn(x, y)
                if not torch.isfinite(loss):
                    if cfg["nonfinite_loss"] != "skip":
                        raise UserError(f"loss became {loss.item()} at step {state['step'] + 1}; last.pt keeps the "
                                        "last good state: lower lr or check the data, then --resume (or set "
                                        "nonfinite_loss=skip)")
                    state["skipped"] = state.get("skipped", 0) + 1  # the batch adds no gradient
                    if world > 1:  # DDP waits for this batch's gradients on every rank: reduce zeros
                        (sum(p.sum() for p in step_fn.parameters()) * 0.0).backward()
                    log(f"step {state['step'] + 1}: loss {loss.item()}, batch skipped ({state['skipped']} so far)")
                else:
                    scaler.scale(loss / cfg["accum_steps"]).backward()
                    state["loss_sum"] += loss.item()
            except torch.cuda.OutOfMemoryError:
                bs, acc = cfg["batch_size"], cfg["accum_steps"]
                raise UserError(f"CUDA out of memory at batch_size={bs}: try batch_size={max(1, bs // 2)} "
                                f"accum_steps={acc * 2} (the same effective batch) or a smaller image_size; "
                                "last.pt keeps the last saved state (--resume continues from it)") from None
            state["batch"] += 1
            seen += len(x) * world
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
            if state["batch"] % cfg["accum_steps"]:
                continue
            scaler.step(opt), scaler.update(), sched.step()
            opt.zero_grad(set_to_none=True)
            state["step"] += 1
            if ema is not None:
                ema.update(model, step=state["step"])
            if cfg["save_every_steps"] and state["step"] % cfg["save_every_steps"] == 0:
                snapshot()
        train_seconds = time.time() - t0
        metrics = evaluate(model, eval_head, train_items, val_items, classes, codes, tfms, cfg, device)
        if ema is not None and val_items:
            metrics["ema_val_map5"] = evaluate(ema.module, eval_head, train_items, val_items, classes, codes, tfms,
                                               cfg, device)["val_map5"]
        if plateau.step(metrics.get("val_map5")):
            for g in opt.param_groups:  # the cut applies from the next step, not one step late
                g["lr"] = g["initial_lr"] * lr_factor(cfg, sched.last_epoch, total) * plateau.scale
            log(f"val MAP@5 plateaued: learning rates x{plateau.scale:.3g} of schedule")
        row = {"epoch": epoch + 1, "step": state["step"], "lr": opt.param_groups[0]["lr"],
               "train_loss": state["loss_sum"] / batches_per_epoch, "seconds": round(time.time() - t0, 2),
               "images_per_sec": round(seen / max(train_seconds, 1e-9), 1)}
        row.update({k: "" if metrics.get(k) is None else metrics[k]
                    for k in ("val_loss", "val_acc", "val_map5", "ema_val_map5")})
        state["history"].append({k: row[k] for k in METRIC_COLUMNS})
        state.update(epoch=epoch + 1, batch=0, loss_sum=0.0)
        is_best = metrics.get("val_map5", 0.0) > state["best_map5"] or not val_items
        if is_best:
            state["best_map5"] = metrics.get("val_map5", 0.0)
        if not rank:
            write_csv(out / "metrics.csv", METRIC_COLUMNS, [[r[k] for k in METRIC_COLUMNS] for r in state["history"]])
            training_curves([{k: str(v) for k, v in r.items()} for r in state["history"]], out / "curves.png",
                            f"{cfg['name']} fold {cfg['fold']}")
        # last.pt, the resume point, goes last: killed before it, a resume redoes this epoch's end (best, ema)
        if is_best:
            snapshot("best")
        if ema is not None:
            snapshot("ema")
        snapshot()
        log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.4f}, {_describe(metrics)}, "
            f"{row['images_per_sec']} img/s, {row['seconds']}s")
    return out


def _describe(metrics):
    if not metrics:
        return "no val"
    parts = [f"val loss {metrics['val_loss']:.3f}"]
    if metrics.get("val_acc") is not None:
        parts.append(f"acc {metrics['val_acc']:.3f}")
    parts.append(f"MAP@5 {metrics['val_map5']:.4f}")
    if "ema_val_map5" in metrics:
        parts.append(f"EMA MAP@5 {metrics['ema_val_map5']:.4f}")
    return " ".join(parts)
