"""SCHEDULERS and the learning rate over training: the learning rate of group g at optimiser step s is
lr * lr_mult[g] * warmup_then_schedule(s) * plateau_scale, so every schedule gets the same warm-up and a resume
restores it exactly from (step, plateau state); ReduceLROnPlateau's state is a plain dict. Also the image size
over training (image_size_schedule: progressive resizing), a function of the epoch alone, so a resume repeats it."""
import math

from pipeline.core.errors import UserError

# Schedules map progress t in [0, 1] after warm-up and the floor min_lr/lr to a factor of the peak lr.
SCHEDULERS = {
    "cosine": lambda t, floor: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)),
    "linear": lambda t, floor: floor + (1 - floor) * (1 - t),
    "constant": lambda t, floor: 1.0,
    "plateau": lambda t, floor: 1.0,  # cuts come from Plateau, applied on top
}


def check_scheduler(cfg: dict) -> None:
    if cfg["scheduler"] not in SCHEDULERS:
        raise UserError(f"unknown scheduler '{cfg['scheduler']}' ({' | '.join(SCHEDULERS)})")


def lr_factor(cfg: dict, step: int, total: int) -> float:
    """Linear warm-up over warmup_steps, then the configured schedule over the remaining steps."""
    warm = cfg["warmup_steps"]
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    floor = cfg["min_lr"] / cfg["lr"] if cfg["lr"] else 0.0
    return SCHEDULERS[cfg["scheduler"]](t, floor)


class Plateau:
    """ReduceLROnPlateau (mode max) on val MAP@5: after `patience` epochs without a new best, scale *= factor.
    Its state is a plain dict kept in the checkpoint's progress."""

    def __init__(self, cfg, state=None):
        self.enabled = cfg["scheduler"] == "plateau"
        self.patience, self.factor = cfg["plateau"]["patience"], cfg["plateau"]["factor"]
        self.state = state or {"best": -math.inf, "bad": 0, "scale": 1.0}

    @property
    def scale(self) -> float:
        return self.state["scale"]

    def step(self, metric: float | None) -> bool:
        if not self.enabled or metric is None:
            return False
        if metric > self.state["best"] * (1 + 1e-4):  # torch's default relative threshold, mode max
            self.state.update(best=metric, bad=0)
            return False
        self.state["bad"] += 1
        if self.state["bad"] > self.patience:
            self.state.update(scale=self.state["scale"] * self.factor, bad=0)
            return True
        return False


def check_size_schedule(cfg: dict) -> list[tuple[int, int]]:
    """image_size_schedule as (first epoch, size) pairs, increasing epochs; a one-line error names a bad entry."""
    sched, pairs = cfg["image_size_schedule"], []
    for entry in sched:
        ok = isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in entry)
        if not ok or entry[0] < 0 or entry[1] < 8 or (pairs and entry[0] <= pairs[-1][0]):
            raise UserError(f"image_size_schedule={sched!r}: give [[epoch, size], ...] with epochs >= 0 in increasing "
                            f"order and sizes >= 8 (bad entry {entry!r}), e.g. [[0, 384], [8, 448], [14, 512]]")
        pairs.append((entry[0], entry[1]))
    return pairs


def image_size_at(cfg: dict, epoch: int, size: int) -> int:
    """The training image size of a 0-based epoch: the last schedule entry starting at or before it, else size."""
    for first, s in check_size_schedule(cfg):
        if first <= epoch:
            size = s
    return size
