"""Outside data, the config's extra_data: folders in any layout LAYOUTS knows whose training images join the
competition's (Hotel-ID 2022's 2nd place trained on the competition plus outside hotel photos, then fine-tuned on
the competition's classes alone: stage 2 is a run with init_from and no extra_data).

An outside class joins the class space under its folder's prefix, extra: for the first folder and extra2:, extra3:
... for the next ones in list order (so adding a folder renames no class of those before it), unless the folder's
label map (extra_label,label) maps it onto a competition class: it then trains as that class. Several outside
classes may map onto one competition class (two outside ids of one hotel); one outside class mapped onto two is an
error. Image ids take the same prefix, so they never meet the competition's or another folder's.

Outside images are never validated and never in the folds file. extra_images: train (trained on), gallery (only in
the ranking gallery of embed and ensemble) or both. Only mapped images join a gallery, under their competition
class: an outside class is never a predicted label. Training's own validation ranks against the competition's
images alone (folds.labelled)."""
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.io import read_table
from pipeline.data.layouts import Item, known_layout, load_dataset

EXTRA_IMAGES = ("train", "gallery", "both")
ENTRY_KEYS = ("path", "label_map", "layout", "csv")  # an entry's keys when it is a mapping, not a bare folder
MAP_COLUMNS = ["extra_label", "label"]
LABEL_MAP = "label_map.csv"  # a folder's own label map: read when its entry names none


@dataclass
class ExtraItem(Item):
    """An outside image: its id prefixed, its label a competition class (mapped) or its prefixed own class."""
    mapped: bool = False


@dataclass(frozen=True)
class Source:
    """One extra_data entry: its folder, its label map (None: every class its own), the layout loader's config
    (layout, csv section) and the prefix of its ids and own classes."""
    path: Path
    label_map: Path | None
    loader: dict
    prefix: str
    name: str  # 'extra_data entry <n>', for errors


def prefix(k: int) -> str:
    """The prefix of the k-th (0-based) extra_data folder's ids and own classes."""
    return "extra:" if k == 0 else f"extra{k + 1}:"


def check(cfg: dict) -> None:
    """extra_images, before any folder is read (the config's reader makes extra_data a list)."""
    if cfg.get("extra_images", "train") not in EXTRA_IMAGES:
        raise UserError(f"extra_images={cfg['extra_images']!r}: use train (trained on), gallery (in the ranking "
                        "gallery only) or both")


def source(k: int, entry: object) -> Source:
    """The k-th extra_data entry: a folder, or a mapping {path, label_map, layout, csv}. label_map: '' = none;
    left out, the folder's own label_map.csv when it has one."""
    name = f"extra_data entry {k + 1}"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
        raise UserError(f"{name}: {entry!r}: give a folder, or a mapping with path (and optionally label_map, "
                        "layout, csv)")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise UserError(f"{name}: unknown key '{unknown[0]}' (known: {', '.join(ENTRY_KEYS)})")
    path = Path(entry["path"])
    given = entry.get("label_map")
    if given is None:
        label_map = path / LABEL_MAP if (path / LABEL_MAP).is_file() else None
    else:
        label_map = Path(given) if given else None
    loader = {"layout": entry.get("layout", "auto"), "csv": entry.get("csv") or {}}
    return Source(path, label_map, loader, prefix(k), name)


def extra_items(cfg: dict, classes: list[str], data: str | Path,
                log: Callable[[str], object] | None = None) -> list[ExtraItem]:
    """Every training image of the config's extra_data folders, labelled for training; classes: the competition's
    (of the folder `data`, named in errors)."""
    items = []
    for k, entry in enumerate(cfg.get("extra_data") or []):
        src = source(k, entry)
        ds = _load(src)
        mapping = read_label_map(src, {it.label for it in ds.train}, set(classes), data) if src.label_map else {}
        mine = [ExtraItem(src.prefix + it.image_id, it.path, mapping.get(it.label, src.prefix + it.label),
                          it.label in mapping) for it in ds.train]
        if log:
            own = {it.label for it in mine if not it.mapped}
            log(f"outside data {src.path}: {len(mine)} images, {len(own)} classes of its own ({src.prefix}<label>), "
                f"{len(mapping)} mapped onto {len(set(mapping.values()))} competition classes "
                f"({sum(it.mapped for it in mine)} images)")
        items += mine
    return items


def _load(src: Source):
    """The entry's Dataset; its layout's errors name the entry."""
    if not src.path.is_dir():
        raise UserError(f"{src.name}: folder '{src.path}' not found; fix the path (./run.sh make-data --out DATA "
                        "--extra N writes the demo's at DATA-extra)")
    if src.loader["layout"] == "auto" and not known_layout(src.path):
        raise UserError(f"{src.name}: '{src.path}' is not a folder of a known layout (hotelid: "
                        "train_images/<class>/<image>; csv: train.csv; query_gallery: gallery/<class>/<image>); "
                        "point it at one")
    try:
        return load_dataset(src.path, src.loader)
    except UserError as e:
        raise UserError(f"{src.name}: {e}") from None


def read_label_map(src: Source, extra_classes: set[str], classes: set[str], data: str | Path) -> dict[str, str]:
    """{outside class: competition class} of the entry's label map. A row naming an outside class the folder lacks
    is skipped (a map may cover more than the images at hand); an empty cell, a competition class that does not
    exist, or an outside class mapped onto two classes is a UserError naming the row."""
    path, fix = src.label_map, f"(the label map of {src.name}: columns {','.join(MAP_COLUMNS)})"
    if not path.is_file():
        raise UserError(f"{src.name}: label map '{path}' not found; give an {','.join(MAP_COLUMNS)} CSV, or "
                        "label_map: '' for none")
    rows = read_table(path, required=MAP_COLUMNS, fix=f" {fix}")
    mapping, first = {}, {}
    for n, (extra, label) in enumerate(zip(rows["extra_label"], rows["label"]), start=2):
        if not extra or not label:
            raise UserError(f"{path} row {n}: empty {'extra_label' if not extra else 'label'} {fix}")
        if label not in classes:
            raise UserError(f"{path} row {n}: label '{label}' is not a competition class of {data}; map '{extra}' "
                            "onto one of its classes or drop the row")
        if mapping.setdefault(extra, label) != label:
            raise UserError(f"{path} row {n}: label-map collision: '{extra}' maps to '{label}' here and to "
                            f"'{mapping[extra]}' at row {first[extra]}; keep one (several outside classes may "
                            "share a competition class, not the reverse)")
        first.setdefault(extra, n)
    return {extra: label for extra, label in mapping.items() if extra in extra_classes}


def trained(cfg: dict, items: list[ExtraItem]) -> list[ExtraItem]:
    """The outside images training adds to its items."""
    return items if cfg.get("extra_images", "train") in ("train", "both") else []


def ranked(cfg: dict, items: list[ExtraItem]) -> list[ExtraItem]:
    """The outside images the ranking gallery adds: the mapped ones (an outside class must never be predicted)."""
    return [it for it in items if it.mapped] if cfg.get("extra_images", "train") in ("gallery", "both") else []


def classes_of(items: list[ExtraItem]) -> list[str]:
    """The outside classes of their own (prefixed, sorted) that items add to the class space."""
    return sorted({it.label for it in items if not it.mapped})
