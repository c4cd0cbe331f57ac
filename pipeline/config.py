"""Configs: default.yaml holds every key; a model file holds what differs; `key=value` overrides both.
An unknown key or a value of the wrong type is a UserError naming it."""
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import argparse

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Range:
    """The values a numeric key may take: low/high inclusive, above/below exclusive, None = unbounded. NaN and
    infinity are never in a range."""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None

    def holds(self, v: float) -> bool:
        return (math.isfinite(v) and (self.low is None or v >= self.low) and (self.high is None or v <= self.high)
                and (self.above is None or v > self.above) and (self.below is None or v < self.below))

    def __str__(self) -> str:
        bounds = ((">=", self.low), (">", self.above), ("<=", self.high), ("<", self.below))
        return " and ".join(f"{op} {b if isinstance(b, int) else format(b, 'g')}" for op, b in bounds if b is not None)


_P = Range(0, 1)  # a probability
_POSITIVE, _COUNT, _NONNEG = Range(above=0), Range(low=1), Range(low=0)
# Every numeric key of default.yaml (tests/test_config.py keeps the two in step): a value outside its range is
# refused where the config is read, before a run folder exists, instead of failing deep inside torch or faiss.
RANGES = {
    "fold": Range(low=-1), "image_scale": _NONNEG, "kernel_test_images": _COUNT, "kernel_time_limit_hours": _POSITIVE,
    "gem_p": _POSITIVE, "embedding_dim": _COUNT, "neck_dropout": Range(0, below=1), "image_size": _NONNEG,
    "crop_pct": Range(above=0, high=1),
    "arcface.s": _POSITIVE, "arcface.m": Range(0, below=math.pi), "cosface.s": _POSITIVE, "cosface.m": _NONNEG,
    "subcenter_arcface.s": _POSITIVE, "subcenter_arcface.k": _COUNT, "subcenter_arcface.m_min": _NONNEG,
    "subcenter_arcface.m_max": _NONNEG, "subcenter_arcface.m": Range(0, below=math.pi),
    "supcon.temperature": _POSITIVE, "triplet.margin": _NONNEG, "loss_transform": _NONNEG,
    "clip.context": _COUNT, "clip.width": _COUNT, "clip.layers": _COUNT, "clip.heads": _COUNT,
    "clip.dropout": Range(0, below=1), "clip.temperature": _POSITIVE,
    "m_per_class.n": _COUNT, "m_per_class.repeats": _COUNT, "repeated_aug.repeats": _COUNT,
    "lr": _NONNEG, "lr_mult.backbone": _NONNEG, "lr_mult.neck": _NONNEG, "lr_mult.head": _NONNEG,
    "lr_mult.text": _NONNEG, "weight_decay": _NONNEG, "momentum": Range(0, below=1), "min_lr": _NONNEG,
    "warmup_steps": _NONNEG, "plateau.patience": _NONNEG, "plateau.factor": Range(above=0, below=1),
    "accum_steps": _COUNT, "ema": Range(0, below=1), "epochs": _COUNT, "batch_size": _COUNT,
    "seed": Range(0, 2**32 - 1),
    "clip_grad": _NONNEG, "layer_decay": Range(0, below=1), "num_workers": Range(low=-1), "save_every_steps": _NONNEG,
    "val_every": _COUNT, "val_gallery": _NONNEG, "crop_scale_min": Range(above=0, high=1), "aug_p_color": _P,
    "aug_p_affine": _P, "aug_p_dropout": _P, "mask_p": _P, "occlusion_fill_p": _P, "eval_batch_size": _COUNT,
    "embed_chunk": _COUNT, "max_memory": _COUNT, "search_candidates": _COUNT, "ivf.nlist": _NONNEG,
    "ivf.nprobe": _COUNT, "hnsw.M": Range(low=2), "hnsw.ef_search": _COUNT, "hnsw.ef_construction": _COUNT,
}
# A run's or an output's name becomes a folder or file name (runs/<name>/, submissions/<name>.csv): no separators,
# no leading dot, so no name reaches outside the folder it is meant for
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,119}")


def check_name(name: object, source: str) -> str:
    """name, when it may name a file or folder in ours; else a UserError naming where it came from."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"{source}: name {name!r} must be letters, digits, '_', '-', '.', '+' or '=' (not starting "
                        "with '.'; it becomes a folder or file name, e.g. <runs_dir>/<name>): rename it")
    return name


def _read_yaml(path):
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value")
    return data


def _coerce(key, value, default, source):
    """Value checked against the default's type (ints are accepted where floats are) and RANGES."""
    value = _typed(key, value, default, source)
    if key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not RANGES[key].holds(value):
        raise UserError(f"{source}: {key}={value!r}: must be {RANGES[key]} (see pipeline/configs/default.yaml)")
    return value


def _typed(key, value, default, source):
    if default == "auto" and (value == "auto" or isinstance(value, (bool, int, float))):
        return value  # an 'auto' key also takes the value it stands for (channels_last: true, val_gallery: 5)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
    elif default is None:
        return value
    raise UserError(f"{source}: '{key}' must be {type(default).__name__}, got {value!r}")


def _merge(base, update, source, prefix=""):
    for key, value in update.items():
        full = f"{prefix}{key}"
        if key not in base:
            raise UserError(f"{source}: unknown config key '{full}' (see pipeline/configs/default.yaml)")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{full}' is a section; set its keys as {full}.<key>=value")
            _merge(base[key], value, source, full + ".")
        else:
            base[key] = _coerce(full, value, base[key], source)


def parse_override(text: str) -> dict:
    """'a.b=value' -> {'a': {'b': value}} with value read as YAML (so 2 is int, false is bool)."""
    if "=" not in text:
        raise UserError(f"'{text}': overrides are key=value (e.g. epochs=2)")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def config_path(name: str | Path) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise UserError(f"{p}: config file not found")
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml") if q.stem != "default"))
        raise UserError(f"unknown config '{name}' (known: {known}; or give a path to a .yaml file)")
    return p


def load_config(name: str | Path, overrides: Iterable[str] = (), **cli: object) -> dict:
    """Resolved config dict for config `name` (a name in pipeline/configs or a .yaml path).
    `overrides` are 'key=value' strings; `cli` are values from command-line flags (None = not given)."""
    cfg = _read_yaml(CONFIG_DIR / "default.yaml")
    path = config_path(name)
    saved_name = None
    if path.name != "default.yaml":
        data = _read_yaml(path)
        saved_name = data.pop("name", None)  # a run's saved config.yaml keeps its config's name
        _merge(cfg, data, str(path))
    for text in overrides:
        _merge(cfg, parse_override(text), "command line")
    flags = {k: v for k, v in cli.items() if v is not None}
    _merge(cfg, flags, "command line")
    cfg["name"] = check_name(saved_name or path.stem, str(path))
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    from pipeline.core.io import write_text

    write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def run_dir(cfg: dict) -> Path:
    return Path(cfg["runs_dir"]) / cfg["name"] / f"fold{cfg['fold']}"


def add_run_set_arguments(p: "argparse.ArgumentParser", folds: bool = False) -> None:
    """Options of the stages that read several trained runs (ensemble, ensemble-report, evaluate, show); with
    folds, --folds too (each config on each of several folds)."""
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    add_fold_arguments(p, folds, "fold of the runs (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default best)")
    p.add_argument("--max-memory", type=int, help="bytes of extra memory for ranking (default 2 GiB)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help="config overrides for every model")


def add_fold_arguments(p: "argparse.ArgumentParser", folds: bool, fold_help: str) -> None:
    """--fold K, and with folds the exclusive --folds SET (parse_folds)."""
    g = p.add_mutually_exclusive_group() if folds else p
    g.add_argument("--fold", type=int, help=fold_help)
    if folds:
        g.add_argument("--folds", metavar="SET", help="several folds, each its own run: 0-4, 0,2 or all (every fold "
                       "of the folds file)")


def load_run_set(positional: list[str], args: "argparse.Namespace") -> list[dict]:
    """The configs named among `positional` (argparse puts key=value given before any option there: they are
    overrides, with --overrides and those after an option), loaded with the add_run_set_arguments flags; with
    --folds one config per config and fold, config by config."""
    overrides = [x for x in positional if "=" in x] + list(args.overrides)
    flags = dict(data=args.data, checkpoint=args.checkpoint, max_memory=args.max_memory)
    names = [x for x in positional if "=" not in x]
    if getattr(args, "folds", None) is None:
        return [load_config(x, overrides, fold=args.fold, **flags) for x in names]
    return [cfg for x in names for cfg in load_folds(x, args.folds, overrides, **flags)]


def load_folds(name: str | Path, folds: str, overrides: Iterable[str] = (), **cli: object) -> list[dict]:
    """The config `name` once per fold of the --folds value `folds` (parse_folds, read in the config's folds_file)."""
    base = load_config(name, overrides, **cli)
    return [load_config(name, overrides, **cli, fold=k)
            for k in parse_folds(folds, base["folds_file"], base["data"])]


def parse_folds(text: str, folds_file: str | Path, data: str | Path) -> list[int]:
    """The folds of a --folds value: 'all' (every fold of the folds file but -1, whose images always train), or
    folds and ranges ('0-4', '0,2', '0-2,4'), each of which must be in the folds file (data: the data folder an
    error's ./run.sh folds command names)."""
    path = Path(folds_file)
    if not path.is_file():
        raise UserError(f"--folds {text}: the folds file {path} is not there (write it with ./run.sh folds or set "
                        "folds_file=...)")
    present = sorted(set(read_fold_table(path, data)[0].values()) - {-1})
    if str(text).strip().lower() == "all":
        if not present:
            raise UserError(f"--folds all: {path} has no validation folds (rerun ./run.sh folds)")
        return present
    folds = []
    for part in str(text).split(","):
        first, dash, last = part.strip().partition("-")
        try:
            lo = int(first)
            hi = int(last) if dash else lo
        except ValueError:
            lo, hi = 0, -1
        if hi < lo:
            raise UserError(f"--folds '{text}': give folds like 0-4, 0,2 or all")
        folds += range(lo, hi + 1)
    missing = [k for k in folds if k not in present]
    if missing:
        raise UserError(f"--folds {text}: fold {missing[0]} is not in {path} (its folds: {fold_text(present)})")
    return list(dict.fromkeys(folds))


def refold(data: str | Path, path: str | Path) -> str:
    """The fix for a folds file that does not fit its data: write it anew."""
    return f"rerun ./run.sh folds --data {data} --out {path}"


def read_fold_table(path: str | Path, data: str | Path) -> tuple[dict[str, int], dict[str, str]]:
    """({image_id: fold}, {image_id: label}) of a folds file as ./run.sh folds writes it: every image on one row,
    every fold -1 or a fold number. Anything else (a hand edit, a merge) is a UserError naming the row and the
    command that writes the file again for the data folder `data`: a second row for an image would otherwise move
    it to another fold unnoticed."""
    from pipeline.core.io import read_table

    rows = read_table(path, required=["image_id", "label", "fold"])
    fix = refold(data, path)
    folds, labels, first = {}, {}, {}
    for row_no, (image_id, label, cell) in enumerate(zip(rows["image_id"], rows["label"], rows["fold"]), start=2):
        if not re.fullmatch(r"-1|[0-9]+", cell.strip()):
            raise UserError(f"{path} row {row_no}: fold '{cell}' of '{image_id}' is not -1 or a fold number: {fix}")
        if image_id in folds:
            raise UserError(f"{path} row {row_no}: '{image_id}' listed twice (also row {first[image_id]}, fold "
                            f"{folds[image_id]}): {fix}")
        folds[image_id], labels[image_id], first[image_id] = int(cell), label, row_no
    return folds, labels


def fold_text(folds: Iterable[int]) -> str:
    """Folds written short: [0, 1, 2, 4] -> '0-2,4'."""
    parts, run = [], []
    for k in sorted(set(folds)):
        if run and k != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(k)
    parts += [run] if run else []
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in parts)


def config_names(cfgs: list[dict]) -> list[str]:
    """The configs of a run set, each once, in order (a config on several folds is several runs)."""
    return list(dict.fromkeys(c["name"] for c in cfgs))


def run_names(cfgs: list[dict]) -> list[str]:
    """Each run's name in reports: its config's name, with /fold<k> when the runs span several folds (m1/fold0);
    a run given twice is a UserError."""
    several = len({c["fold"] for c in cfgs}) > 1
    names = [f"{c['name']}/fold{c['fold']}" if several else c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    return names


def config_from_dict(saved: dict, source: str) -> dict:
    """A resolved config written into a JSON file (an ensemble-report's best.json), over today's defaults and
    checked key by key as a config file is; source names the file in errors."""
    if not isinstance(saved, dict) or not isinstance(saved.get("name"), str):
        raise UserError(f"{source}: a saved config must be a mapping with its name")
    cfg = _read_yaml(CONFIG_DIR / "default.yaml")
    _merge(cfg, {k: v for k, v in saved.items() if k != "name"}, source)
    cfg["name"] = check_name(saved["name"], source)
    return cfg
