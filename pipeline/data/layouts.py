"""Dataset layouts: how a competition folder maps to train items (image, label) and test items.
One plain dict, LAYOUTS, keyed by the config's `layout` name; a new competition layout = one function + one entry.

Every layout takes the submission's format from sample_submission.csv when there is one: its header names the id
and prediction columns of the written submission (Kaggle checks a submission's header against it) and its rows
give the test ids and their order. Test ids are unique: a clash is an error here, not when a submission is
written."""
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pipeline.core.errors import UserError
from pipeline.core.io import read_table

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# default.yaml's csv: section (a test keeps the two equal); repeated here because the kernel's code dataset ships
# without pipeline/configs and a config saved before a key existed lacks it
CSV_DEFAULTS = {"image_column": "image", "label_column": "label", "train_dir": "", "test_dir": "test_images"}


@dataclass
class Item:
    image_id: str
    path: Path
    label: str | None = None


@dataclass
class Dataset:
    root: Path
    train: list
    test: list
    id_column: str = "image_id"
    label_column: str = "hotel_id"
    sample_submission: Path | None = None
    test_ids: list = field(default_factory=list)  # submission row order
    gallery_extra: list = field(default_factory=list)  # outside images the ranking gallery adds (set by folds.split)

    @property
    def classes(self) -> list[str]:
        return sorted({it.label for it in self.train})


def _images_in(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _read_sample(root):
    """(path, [id column, prediction column], ids in row order) of root/sample_submission.csv, or None."""
    path = root / "sample_submission.csv"
    if not path.is_file():
        return None
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    if len(columns) != 2:
        raise UserError(f"{path}: header is {','.join(columns) or 'empty'}; expected two columns, the image id "
                        "and its predictions (e.g. image,predictions)")
    ids, first = [], {}
    for row, cell in enumerate(frame[columns[0]].tolist(), start=2):
        image_id = cell.strip()
        if not image_id:
            raise UserError(f"{path} row {row}: empty {columns[0]}")
        if image_id in first:
            raise UserError(f"{path} row {row}: image id '{image_id}' listed twice (first at row "
                            f"{first[image_id]}); each test image once")
        first[image_id] = row
        ids.append(image_id)
    return path, columns, ids


def _submission(root, test, columns, sample=None):
    """The Dataset's submission fields: the sample submission's header and rows when there is one, else the
    layout's `columns` and the test items' order."""
    sample = sample or _read_sample(root)
    if sample is None:
        return {"id_column": columns[0], "label_column": columns[1], "test_ids": [it.image_id for it in test]}
    path, header, ids = sample
    known = {it.image_id for it in test}
    missing = [i for i in ids if i not in known]
    if missing:
        raise UserError(f"{path}: image id '{missing[0]}' has no test image ({len(missing)} missing); "
                        "check the test folder is complete")
    return {"id_column": header[0], "label_column": header[1], "sample_submission": path, "test_ids": ids}


def hotelid(root: Path, cfg: dict | None = None) -> Dataset:
    """Hotel-ID 2022: train_images/<hotel_id>/<image>, test_images/<image>, sample_submission.csv."""
    train_dir = root / "train_images"
    if not train_dir.is_dir():
        raise UserError(f"{root}: no train_images/ folder (Hotel-ID layout: train_images/<hotel_id>/<image>.jpg)")
    train = []
    for class_dir in sorted(p for p in train_dir.iterdir() if p.is_dir()):
        for img in _images_in(class_dir):
            train.append(Item(f"{class_dir.name}/{img.name}", img, class_dir.name))
    if not train:
        raise UserError(f"{train_dir}: no images found (expected train_images/<hotel_id>/<image>.jpg)")
    test_dir = root / "test_images"
    test = [Item(p.name, p) for p in _images_in(test_dir)] if test_dir.is_dir() else []
    return Dataset(root, train, test, **_submission(root, test, ("image_id", "hotel_id")))


def _inside(root, folder, shown, row, rel):
    """folder/rel resolved; a path that leaves root (.., absolute, a symlink out) is a UserError naming the row."""
    path = (folder / rel).resolve()
    if root.resolve() not in path.parents:
        raise UserError(f"{shown} row {row}: image path '{rel}' leaves the data folder; give paths "
                        "relative to it")
    return path


def _csv_rows(path, wanted):
    """Rows of a csv-layout table; wanted: {csv key: column}. A missing column names the key that sets it."""
    frame = read_table(path)
    has = [str(c) for c in frame.columns]
    missing = {key: col for key, col in wanted.items() if col not in has}
    if missing:
        spare = [c for c in has if c not in wanted.values()]
        guess = spare[0] if len(spare) == 1 and len(missing) == 1 else "COLUMN"
        keys = " ".join(f"csv.{key}={guess}" for key in missing)
        raise UserError(f"{path}: missing column(s) {', '.join(missing.values())} (has: {', '.join(has) or 'none'}); "
                        f"set {keys} (a key=value override, or the config's csv: section)")
    return frame.to_dict("records")


def _found(root, shown, key, rel, path):
    """The first listed image must exist: a wrong csv.<key> folder would otherwise show only when training reads
    the images. Suggests the data folder's subfolder that holds it, if one does."""
    if path.is_file():
        return
    near = [d for d in ["", *(d.name for d in sorted(root.iterdir()) if d.is_dir())] if (root / d / rel).is_file()]
    fix = f"set csv.{key}={near[0] or repr('')}" if near else f"set csv.{key} to the folder the paths are relative to"
    raise UserError(f"{shown} row 2: image '{rel}' not found ({path}); {fix} ('' = the data folder)")


def _named(entries):
    """Test items from (relative path, path, where) entries: id = the file name, or the relative path for every
    item when some file name repeats (a/x.jpg and b/x.jpg). Two entries with one id are a UserError."""
    names = [PurePosixPath(rel).name for rel, _, _ in entries]
    relative = len(set(names)) < len(names)
    items, first = [], {}
    for (rel, path, where), name in zip(entries, names):
        image_id = posixpath.normpath(rel) if relative else name
        if image_id in first:
            raise UserError(f"{where}: test image id '{image_id}' already given by {first[image_id]}; list each "
                            "test image once")
        first[image_id] = where
        items.append(Item(image_id, path))
    return items


def _csv_test(root, cols, sample):
    """Test items: test.csv's paths when it exists, else the sample submission's ids (file names), else every image
    under the test folder; all relative to csv.test_dir."""
    folder = root / cols["test_dir"]
    if (root / "test.csv").is_file():
        shown = root / "test.csv"
        rows = _csv_rows(shown, {"image_column": cols["image_column"]})
        rels = [r[cols["image_column"]] for r in rows]
        entries = [(rel, _inside(root, folder, shown, n, rel), f"{shown} row {n}") for n, rel in enumerate(rels, 2)]
        if entries:
            _found(root, shown, "test_dir", *entries[0][:2])
        return _named(entries)
    if sample is not None:
        path, header, ids = sample
        test = [Item(i, _inside(root, folder, path, n, i)) for n, i in enumerate(ids, start=2)]
        missing = [it for it in test if not it.path.is_file()]
        if missing:
            raise UserError(f"{path}: image id '{missing[0].image_id}' has no test image ({missing[0].path}; "
                            f"{len(missing)} missing); check the test folder is complete, or set csv.test_dir")
        return test
    if not cols["test_dir"] or not folder.is_dir():  # '' would list the training images too
        return []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    return _named([(p.relative_to(folder).as_posix(), p, p) for p in files])


def csv_layout(root: Path, cfg: dict | None) -> Dataset:
    """Generic: train.csv (image path + label columns, paths relative to csv.train_dir), test images (see _csv_test),
    optional sample_submission.csv. Happywhale: csv.label_column=individual_id csv.train_dir=train_images."""
    cols = {**CSV_DEFAULTS, **((cfg or {}).get("csv") or {})}
    image_col, label_col = cols["image_column"], cols["label_column"]
    shown, folder = root / "train.csv", root / cols["train_dir"]
    rows = _csv_rows(shown, {"image_column": image_col, "label_column": label_col})
    if not rows:
        raise UserError(f"{shown}: no rows (expected a {image_col},{label_col} row per training image)")
    train = []
    for n, r in enumerate(rows, start=2):
        rel = r[image_col]
        path = _inside(root, folder, shown, n, rel)
        if not r[label_col]:
            raise UserError(f"{shown} row {n}: empty {label_col}")
        train.append(Item(rel, path, r[label_col]))
    _found(root, shown, "train_dir", train[0].image_id, train[0].path)
    sample = _read_sample(root)
    test = _csv_test(root, cols, sample)
    return Dataset(root, train, test, **_submission(root, test, ("image_id", label_col), sample))


def _class_folders(folder):
    """Items '<class>/<image>' (id = that relative path, label = the folder name) of folder/<class>/<image>."""
    return [Item(f"{d.name}/{img.name}", img, d.name)
            for d in sorted(p for p in folder.iterdir() if p.is_dir()) for img in _images_in(d)]


def query_gallery(root: Path, cfg: dict | None = None) -> Dataset:
    """Seed 000's retrieval benchmark: gallery/<class>/<image> (the training items) and query/<class>/<image>.
    The queries become the test items with their labels kept (test items are otherwise unlabelled), so `embed`
    embeds them as the test split and `evaluate --queries test` scores them against the whole gallery; with no
    sample_submission.csv their order is the folder order. query/ is optional."""
    gallery_dir, query_dir = root / "gallery", root / "query"
    if not gallery_dir.is_dir():
        raise UserError(f"{root}: no gallery/ folder (query/gallery layout: gallery/<class>/<image>, "
                        "query/<class>/<image>)")
    train = _class_folders(gallery_dir)
    if not train:
        raise UserError(f"{gallery_dir}: no images found (expected gallery/<class>/<image>.jpg)")
    test = _class_folders(query_dir) if query_dir.is_dir() else []
    return Dataset(root, train, test, **_submission(root, test, ("image_id", "label")))


LAYOUTS = {"hotelid": hotelid, "csv": csv_layout, "query_gallery": query_gallery}


def detect_layout(root: Path) -> str:
    if (root / "train.csv").is_file():
        return "csv"
    if (root / "gallery").is_dir() and not (root / "train_images").is_dir():
        return "query_gallery"
    return "hotelid"


def known_layout(root: Path) -> bool:
    """Whether root holds what one of the layouts auto-detection picks needs (detect_layout falls back to hotelid)."""
    return (root / "train.csv").is_file() or (root / "gallery").is_dir() or (root / "train_images").is_dir()


def load_dataset(data_dir: str | Path, cfg: dict | None = None) -> Dataset:
    """The Dataset at `data_dir`, with the layout named by cfg['layout'] (auto-detected by default)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data folder '{root}' not found (pass --data DIR, or make one: "
                        f"./run.sh make-data --out {root})")
    name = (cfg or {}).get("layout", "auto")
    if name == "auto":
        name = detect_layout(root)
    if name not in LAYOUTS:
        raise UserError(f"unknown layout '{name}' (known: auto, {', '.join(LAYOUTS)})")
    ds = LAYOUTS[name](root, cfg)
    for what, items in (("image id", ds.train), ("test image id", ds.test)):
        seen = set()
        for it in items:
            if it.image_id in seen:
                raise UserError(f"{root}: duplicate {what} '{it.image_id}'")
            seen.add(it.image_id)
    return ds
