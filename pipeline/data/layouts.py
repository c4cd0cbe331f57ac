"""Dataset layouts: how a competition folder maps to train items (image, label) and test items.
One plain dict, LAYOUTS, keyed by the config's `layout` name; a new competition layout = one function + one entry."""
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import read_table

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


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

    @property
    def classes(self) -> list[str]:
        return sorted({it.label for it in self.train})


def _images_in(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _test_order(root, test, id_column):
    """Sample submission order when there is one (Kaggle scores by id, but humans diff files)."""
    sample = root / "sample_submission.csv"
    if not sample.is_file():
        return None, [it.image_id for it in test]
    ids = read_table(sample, required=[id_column])[id_column].tolist()
    known = {it.image_id for it in test}
    missing = [i for i in ids if i not in known]
    if missing:
        raise UserError(f"{sample}: image id '{missing[0]}' has no test image ({len(missing)} missing); "
                        "check the test folder is complete")
    return sample, ids


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
    sample, ids = _test_order(root, test, "image_id")
    return Dataset(root, train, test, "image_id", "hotel_id", sample, ids)


def _inside(root, csv_name, row, rel):
    """root/rel resolved; a path that leaves root (.., absolute, a symlink out) is a UserError naming the row."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise UserError(f"{root / csv_name} row {row}: image path '{rel}' leaves the data folder; give paths "
                        "relative to it")
    return path


def csv_layout(root: Path, cfg: dict | None) -> Dataset:
    """Generic: train.csv (image path + label columns), test.csv (image column) or test_images/."""
    cols = cfg["csv"] if cfg else {"image_column": "image", "label_column": "label"}
    image_col, label_col = cols["image_column"], cols["label_column"]
    rows = read_table(root / "train.csv", required=[image_col, label_col]).to_dict("records")
    train = []
    for n, r in enumerate(rows, start=2):
        rel = r[image_col]
        path = _inside(root, "train.csv", n, rel)
        if not r[label_col]:
            raise UserError(f"{root / 'train.csv'} row {n}: empty {label_col}")
        train.append(Item(rel, path, r[label_col]))
    if (root / "test.csv").is_file():
        test = [Item(Path(r[image_col]).name, _inside(root, "test.csv", n, r[image_col]))
                for n, r in enumerate(read_table(root / "test.csv", required=[image_col]).to_dict("records"), start=2)]
    elif (root / "test_images").is_dir():
        test = [Item(p.name, p) for p in _images_in(root / "test_images")]
    else:
        test = []
    sample, ids = _test_order(root, test, "image_id")
    return Dataset(root, train, test, "image_id", label_col, sample, ids)


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
    sample, ids = _test_order(root, test, "image_id")
    return Dataset(root, train, test, "image_id", "label", sample, ids)


LAYOUTS = {"hotelid": hotelid, "csv": csv_layout, "query_gallery": query_gallery}


def detect_layout(root: Path) -> str:
    if (root / "train.csv").is_file():
        return "csv"
    if (root / "gallery").is_dir() and not (root / "train_images").is_dir():
        return "query_gallery"
    return "hotelid"


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
    seen = set()
    for it in ds.train:
        if it.image_id in seen:
            raise UserError(f"{root}: duplicate image id '{it.image_id}'")
        seen.add(it.image_id)
    return ds
