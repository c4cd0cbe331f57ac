"""Train a config on one fold: runs/<config>/fold<k>/ gets config.yaml, last.pt, best.pt, metrics.csv, curves.png.

Validation each epoch: loss and accuracy of the head, and MAP@5 of the validation images (val pipeline:
with the red test-like hole) against the training images (test pipeline) as gallery. --resume continues
from last.pt (weights, optimiser, scheduler, epoch, position in the epoch, RNG).

example: ./run.sh train m1 --data data/demo --fold 0 epochs=2 batch_size=8"""
import math
import sys
import time

from .errors import UserError

METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_loss", "val_acc", "val_map5", "seconds", "images_per_sec"]


def add_arguments(p):
    p.add_argument("config", help="config name in pipeline/configs (m1 ... m7) or a .yaml path")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--fold", type=int, help="validation fold (default: the config's, 0)")
    p.add_argument("--resume", action="store_true", help="continue from last.pt of this run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=2 arcface.m=0.3")


def run(args):
    from .config import load_config

    train(load_config(args.config, args.overrides, data=args.data, fold=args.fold), resume=args.resume)


def split(cfg):
    """(dataset, train items, val items, classes) for the config's data and fold."""
    from .data.layouts import load_dataset
    from .folds import read_folds

    ds = load_dataset(cfg["data"], cfg)
    folds = read_folds(cfg["folds_file"], ds)
    train_items = [it for it in ds.train if folds[it.image_id] != cfg["fold"]]
    val_items = [it for it in ds.train if folds[it.image_id] == cfg["fold"]]
    return ds, train_items, val_items, ds.classes


def lr_factor(cfg, step, total):
    """Linear warm-up, then cosine from 1 to min_lr/lr (stepped per iteration) or constant."""
    warm = cfg["warmup_steps"]
    if step < warm:
        return (step + 1) / warm
    if cfg["scheduler"] == "constant":
        return 1.0
    t = (step - warm) / max(1, total - warm)
    floor = cfg["min_lr"] / cfg["lr"] if cfg["lr"] else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def make_optimizer(cfg, params):
    import torch

    name, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(cfg["momentum"], 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(cfg["momentum"], 0.999), weight_decay=wd)
    raise UserError(f"unknown optimizer '{name}' (sgd | adam | adamw)")


def evaluate(model, head, train_items, val_items, classes, codes, tfms, cfg, device):
    from .inference import embed_items
    from .retrieval import map5

    if not val_items:
        return {}
    q, stats = embed_items(model, val_items, tfms["val"], cfg, device, head=head, codes=codes)
    g, _ = embed_items(model, train_items, tfms["test"], cfg, device)
    score = map5([q], [it.label for it in val_items], [g], [it.label for it in train_items], classes,
                 max_memory=cfg["max_memory"], log=lambda *a: None)
    return {"val_loss": stats["loss"], "val_acc": stats["acc"], "val_map5": score}


def train(cfg, resume=False, log=print):
    """Run (or resume) training; returns the run folder."""
    import torch
    from tqdm import tqdm

    from . import checkpoint
    from .config import run_dir, save_config
    from .data.dataset import EpochBatchSampler, ImageDataset, loader
    from .data.transforms import build_transform
    from .heads import build_head
    from .inference import autocast, pick_device
    from .io import write_csv
    from .model import build_model, input_config
    from .plots import training_curves

    out = run_dir(cfg)
    ds, train_items, val_items, classes = split(cfg)
    codes = {c: i for i, c in enumerate(classes)}
    steps_per_epoch = len(train_items) // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise UserError(f"batch_size={cfg['batch_size']} exceeds the {len(train_items)} training images")
    total = steps_per_epoch * cfg["epochs"]
    device = pick_device()
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg["seed"])
    model, source = build_model(cfg, with_weights=not resume)
    head = build_head(cfg, len(classes))
    size, mean, std = input_config(cfg, model.backbone)
    tfms = {k: build_transform(k, cfg, size, mean, std) for k in ("train", "val", "test")}
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    model.to(device, memory_format=fmt), head.to(device)
    opt = make_optimizer(cfg, list(model.parameters()) + list(head.parameters()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg["amp"] and device == "cuda")
    state = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "best_map5": -1.0, "history": []}
    if resume:
        ck = checkpoint.load(out / "last.pt", cfg)
        if ck["classes"] != classes:
            raise UserError(f"{out / 'last.pt'} was trained on other classes than {cfg['data']}: start afresh")
        model.load_state_dict(ck["model"]), head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optimizer"]), sched.load_state_dict(ck["scheduler"])
        state.update(ck["progress"])
        torch.set_rng_state(ck["rng"])
        log(f"resuming {out} at epoch {state['epoch'] + 1}, batch {state['batch']} (step {state['step']})")
    else:
        log(f"training {cfg['name']} fold {cfg['fold']}: {cfg['backbone']} ({source or 'random init'}), "
            f"{len(train_items)} train / {len(val_items)} val images, {len(classes)} classes, {size}px, {device}")
    save_config(cfg, out / "config.yaml")

    def snapshot(best=False):
        ck = {"model": model.state_dict(), "head": head.state_dict(), "config": cfg, "classes": classes,
              "progress": dict(state), "image_size": size, "mean": list(mean), "std": list(std)}
        if best:
            checkpoint.save(ck, out / "best.pt")
        else:
            ck.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=torch.get_rng_state())
            checkpoint.save(ck, out / "last.pt")

    train_ds = ImageDataset(train_items, tfms["train"], codes)
    while state["epoch"] < cfg["epochs"]:
        epoch, t0 = state["epoch"], time.time()
        sampler = EpochBatchSampler(len(train_items), cfg["batch_size"], cfg["seed"], epoch, start=state["batch"])
        dl = loader(train_ds, batch_sampler=sampler, num_workers=cfg["num_workers"], device=device)
        model.train(), head.train()
        seen = 0
        bar = tqdm(dl, total=len(sampler), desc=f"epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                   disable=not sys.stderr.isatty(), file=sys.stderr)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True).contiguous(memory_format=fmt), y.to(device)
            with autocast(device, cfg["amp"]):
                loss = head(model(x).float(), y)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at step {state['step'] + 1}; last.pt keeps the last "
                                "good state: lower lr or check the data, then --resume")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt), scaler.update(), sched.step()
            state["step"] += 1
            state["batch"] += 1
            state["loss_sum"] += loss.item()
            seen += len(x)
            bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{seen / (time.time() - t0):.0f}")
            if cfg["save_every_steps"] and state["step"] % cfg["save_every_steps"] == 0:
                snapshot()
        train_seconds = time.time() - t0
        metrics = evaluate(model, head, train_items, val_items, classes, codes, tfms, cfg, device)
        row = {"epoch": epoch + 1, "step": state["step"], "lr": opt.param_groups[0]["lr"],
               "train_loss": state["loss_sum"] / steps_per_epoch, "seconds": round(time.time() - t0, 2),
               "images_per_sec": round(seen / max(train_seconds, 1e-9), 1)}
        row.update({k: metrics.get(k, "") for k in ("val_loss", "val_acc", "val_map5")})
        state["history"].append({k: row[k] for k in METRIC_COLUMNS})
        state.update(epoch=epoch + 1, batch=0, loss_sum=0.0)
        is_best = metrics.get("val_map5", 0.0) > state["best_map5"] or not val_items
        if is_best:
            state["best_map5"] = metrics.get("val_map5", 0.0)
        write_csv(out / "metrics.csv", METRIC_COLUMNS, [[r[k] for k in METRIC_COLUMNS] for r in state["history"]])
        training_curves([{k: str(v) for k, v in r.items()} for r in state["history"]], out / "curves.png",
                        f"{cfg['name']} fold {cfg['fold']}")
        snapshot()
        if is_best:
            snapshot(best=True)
        vm = f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} MAP@5 {row['val_map5']:.4f}" if metrics else "no val"
        log(f"epoch {epoch + 1}/{cfg['epochs']}: train loss {row['train_loss']:.4f}, {vm}, "
            f"{row['images_per_sec']} img/s, {row['seconds']}s")
    return out
