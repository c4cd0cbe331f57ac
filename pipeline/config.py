"""Configs: default.yaml holds every key; a model file holds what differs; `key=value` overrides both.
An unknown key or a value of the wrong type is a UserError naming it."""
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.errors import UserError

if TYPE_CHECKING:
    import argparse

CONFIG_DIR = Path(__file__).parent / "configs"


def _read_yaml(path):
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of key: value")
    return data


def _coerce(key, value, default, source):
    """Value checked against the default's type (ints are accepted where floats are)."""
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
    cfg["name"] = saved_name or path.stem
    return cfg


def save_config(cfg: dict, path: str | Path) -> None:
    from pipeline.io import write_text

    write_text(path, yaml.safe_dump(cfg, sort_keys=False))


def run_dir(cfg: dict) -> Path:
    return Path(cfg["runs_dir"]) / cfg["name"] / f"fold{cfg['fold']}"


def add_run_set_arguments(p: "argparse.ArgumentParser") -> None:
    """Options of the stages that read several trained runs (ensemble, ensemble-report, evaluate, show)."""
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    p.add_argument("--fold", type=int, help="fold of the runs (default 0)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default best)")
    p.add_argument("--max-memory", type=int, help="bytes of extra memory for ranking (default 2 GiB)")
    p.add_argument("--overrides", nargs="*", default=[], metavar="key=value", help="config overrides for every model")


def load_run_set(positional: list[str], args: "argparse.Namespace") -> list[dict]:
    """The configs named among `positional` (argparse puts key=value given before any option there: they are
    overrides, with --overrides and those after an option), loaded with the add_run_set_arguments flags."""
    overrides = [x for x in positional if "=" in x] + list(args.overrides)
    return [load_config(x, overrides, data=args.data, fold=args.fold, checkpoint=args.checkpoint,
                        max_memory=args.max_memory) for x in positional if "=" not in x]
