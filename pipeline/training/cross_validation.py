"""Training a config on several folds, one run folder each (runs/<config>/fold<k>/), one fold after the other;
resumable fold by fold: with resume, a fold whose last.pt has every epoch is skipped, a fold with an unfinished
last.pt resumes from it, and a fold without one starts afresh."""
from collections.abc import Callable
from pathlib import Path

from pipeline.config import fold_text, run_dir
from pipeline.core import checkpoint, distributed
from pipeline.training.loop import train


def progress(cfg: dict) -> dict | None:
    """The progress saved in the fold's last.pt (epoch, batch, ...), None without one; a last.pt of another model
    is a UserError."""
    last = run_dir(cfg) / "last.pt"
    return checkpoint.load(last, cfg, checkpoint.RESUME_ENTRIES)["progress"] if last.is_file() else None


def train_folds(cfgs: list[dict], resume: bool = False, log: Callable[..., None] = print) -> list[Path]:
    """Train each config (one per fold) in turn; with resume, skip the finished folds and resume the started one.
    Returns the run folders."""
    log = distributed.main_only(log)
    folds = fold_text(c["fold"] for c in cfgs)
    outs = []
    for i, cfg in enumerate(cfgs, start=1):
        saved = progress(cfg) if resume else None
        where = f"{cfg['name']} fold {cfg['fold']} ({i}/{len(cfgs)} of folds {folds})"
        if saved and saved["epoch"] >= cfg["epochs"]:
            log(f"{where}: done ({saved['epoch']}/{cfg['epochs']} epochs in {run_dir(cfg) / 'last.pt'}), skipped")
            outs.append(run_dir(cfg))
            continue
        log(f"{where}: {'resuming' if saved else 'training'}")
        outs.append(train(cfg, resume=saved is not None, log=log))
    log(f"trained {cfgs[0]['name']} on folds {folds}: {', '.join(map(str, outs))}")
    return outs
