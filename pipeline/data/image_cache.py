"""The image cache: every image decoded once, reduced so its shorter side is image_scale x image_size
(data/images.read_image with short_side: a large JPEG decoded at 1/2-1/8 scale), and stored where reading it back
costs next to nothing. Training and embedding then read the cache instead of decoding full-size photos each epoch;
augmentation is unchanged (its crop scales refer to the whole, reduced image), and a memmap-cached image is the
very array an uncached read with the same image_scale gives.

Layout: <image_cache_dir>/<format>-short<side>-v<VERSION>/ holds per split (train, test):
  <split>.index.csv   path, size, mtime_ns, offset, height, width of every cached image (written atomically)
  <split>.u8          memmap format: the images' uint8 HWC bytes, appended chunk by chunk
  <split>/<sha1>.jpg  jpeg format: one quality-95 JPEG per image
An entry is used only while its source's path, size and mtime match (else the source is read afresh, and the next
build replaces it): never stale. A killed build keeps every chunk its index lists and resumes from there (bytes
of a memmap beyond the index are a chunk cut short: cut off on resume)."""
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.io import damaged
from pipeline.data.images import default_workers, read_image

VERSION = 1  # bump when what is stored changes (decode, resize)
FORMATS = ("memmap", "jpeg")
COLUMNS = ["path", "size", "mtime_ns", "offset", "height", "width"]
_CHUNK = 256  # images per build step: the unit a kill can lose
_JPEG_QUALITY = 95


@dataclass(frozen=True)
class CacheSpec:
    """What a cached image is: its shorter side (px) and the storage format; each spec has its own folder."""
    short_side: int
    format: str = "memmap"

    @classmethod
    def of(cls, cfg: dict, image_size: int) -> "CacheSpec":
        """The spec of a config at the model's input size; image_scale must be set for a cache to make sense."""
        if cfg["image_scale"] <= 0:
            raise UserError(f"image_cache=true needs image_scale > 0 (got {cfg['image_scale']}): the cache keeps "
                            "images reduced to image_scale x image_size on the shorter side; set e.g. image_scale=1.5")
        if cfg["image_cache_format"] not in FORMATS:
            raise UserError(f"image_cache_format={cfg['image_cache_format']!r}: use one of {', '.join(FORMATS)}")
        return cls(short_side(cfg, image_size), cfg["image_cache_format"])

    def folder(self, root) -> Path:
        return Path(root) / f"{self.format}-short{self.short_side}-v{VERSION}"


def short_side(cfg: dict, image_size: int) -> int:
    """The shorter side images are reduced to before augmentation (0 = full size)."""
    return int(np.ceil(cfg["image_scale"] * image_size)) if cfg["image_scale"] > 0 else 0


def _source_stat(path):
    """(size, mtime_ns) of a source image, or None when it is gone: one system call, on every cached read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _stat(path):
    st = _source_stat(path)
    if st is None:
        raise UserError(f"{path}: image file not found")
    return st


def _jpeg_name(folder, split, path):
    return folder / split / f"{hashlib.sha1(str(path).encode()).hexdigest()}.jpg"


def _prepare(path, side, fmt, target):
    """One image reduced (a worker's job): its array (memmap) or its written JPEG's shape (jpeg)."""
    img = read_image(path, side)
    if fmt == "memmap":
        return img
    from pipeline.core.io import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        Path(tmp).write_bytes(buf.tobytes())
    return img.shape


class _Store:
    """One split's index (a DataFrame keyed by source path) and data of one spec's folder."""

    def __init__(self, folder: Path, split: str, fmt: str):
        import pandas as pd

        from pipeline.core.io import read_table

        fix = "run ./run.sh cache-images again (train and embed with image_cache=true refill it too)"
        self.folder, self.split, self.format = folder, split, fmt
        self.index_path, self.data_path = folder / f"{split}.index.csv", folder / f"{split}.u8"
        frame = (read_table(self.index_path, COLUMNS, ours=fix) if self.index_path.is_file()
                 else pd.DataFrame(columns=COLUMNS))
        try:
            self.entries = {r.path: (int(r.size), int(r.mtime_ns), int(r.offset), int(r.height), int(r.width))
                            for r in frame.itertuples(index=False)}
        except ValueError as e:
            raise damaged(self.index_path, f"a cell is not a number: {e}", fix) from None

    def fresh(self, path: str) -> bool:
        e = self.entries.get(path)
        return e is not None and e[:2] == _source_stat(path)

    def end(self) -> int:
        """Bytes of the memmap file the index vouches for."""
        return max((e[2] + e[3] * e[4] * 3 for e in self.entries.values()), default=0)

    def save_index(self):
        import pandas as pd

        from pipeline.core.io import write_table

        rows = [(p, *e) for p, e in self.entries.items()]
        write_table(self.index_path, pd.DataFrame(rows, columns=COLUMNS))


def build_cache(splits: dict, spec: CacheSpec, root, n_jobs: int = -1, log=print) -> dict:
    """Cache the images of each split ({split: [Item]}) that have no fresh entry, _CHUNK at a time in parallel
    (joblib); returns {split: images newly cached}."""
    from joblib import Parallel

    folder = spec.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    stores = {split: _Store(folder, split, spec.format) for split in splits}
    todo = {split: list(dict.fromkeys(str(it.path) for it in items if not stores[split].fresh(str(it.path))))
            for split, items in splits.items()}
    for split, paths in todo.items():
        if not paths:
            log(f"image cache {folder.name}/{split}: {len(splits[split])} images, all cached")
    if any(todo.values()):
        with Parallel(n_jobs=n_jobs if n_jobs > 0 else default_workers()) as pool:  # worker processes: only if needed
            for split, paths in todo.items():
                if paths:
                    _build_split(stores[split], paths, spec, pool, log)
    return {split: len(paths) for split, paths in todo.items()}


def _build_split(store, todo, spec, pool, log):
    from joblib import delayed

    if spec.format == "memmap" and store.data_path.exists():
        os.truncate(store.data_path, store.end())  # a chunk cut short by a kill
    t0, done = time.time(), 0
    for i in range(0, len(todo), _CHUNK):
        chunk = todo[i:i + _CHUNK]
        stats = [_stat(p) for p in chunk]  # before the decode: a file changed meanwhile reads stale, not new
        out = pool(delayed(_prepare)(p, spec.short_side, spec.format, _jpeg_name(store.folder, store.split, p))
                   for p in chunk)
        _record(store, chunk, stats, out)
        done += len(chunk)
        log(f"image cache {store.folder.name}/{store.split}: {done}/{len(todo)} cached "
            f"({done / max(time.time() - t0, 1e-9):.0f} img/s)")


def _record(store, paths, stats, out):
    """Append a chunk's arrays (memmap) and list the chunk in the index; the index goes last."""
    offset = store.end() if store.format == "memmap" else 0
    if store.format == "memmap":
        with open(store.data_path, "ab") as f:
            if f.tell() != offset:
                raise UserError(f"{store.data_path}: {f.tell()} bytes, its index lists {offset}: another build is "
                                "writing this cache; run one at a time")
            for img in out:
                f.write(np.ascontiguousarray(img).tobytes())
    for path, st, img in zip(paths, stats, out):
        h, w = (img.shape if store.format == "memmap" else img)[:2]
        store.entries[path] = (*st, offset, h, w)
        offset += h * w * 3 if store.format == "memmap" else 0
    store.save_index()


class ImageReader:
    """item -> RGB uint8 HWC: from the cache where its entry is fresh, else decoded from the source (reduced to
    short_side when > 0). Picklable: loader workers get a copy and open the cache file themselves. A memmap-format
    image is read with pread into a fresh array rather than through a mapping of the file: a mapping keeps every
    page an epoch touches in the loader workers' resident memory (Hotel-ID's 44k photos at shorter side 144 are
    3.8 GB of cache), a read leaves them to the page cache."""

    def __init__(self, short_side: int = 0, folder: Path | None = None, fmt: str = "memmap",
                 splits: tuple = ("train", "test")):
        self.short_side, self.folder, self.format = short_side, folder, fmt
        self.entries, self._files = {}, {}
        for split in splits if folder is not None else ():
            for path, e in _Store(folder, split, fmt).entries.items():
                self.entries[path] = (split, *e)

    def describe(self) -> str:
        """What the reader changes in the pixels, for embedding cache keys: '' when it reads whole images."""
        if not self.short_side:
            return ""
        return f"|shorter side {self.short_side}" + (" via jpeg cache" if self.folder and self.format == "jpeg" else "")

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}  # descriptors are reopened in each worker

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            os.close(fd)

    def __call__(self, item) -> np.ndarray:
        path = str(item.path)
        e = self.entries.get(path)
        if e is None or e[1:3] != _source_stat(path):
            return read_image(path, self.short_side)
        split, _, _, offset, h, w = e
        if self.format == "jpeg":
            return cv2.cvtColor(cv2.imread(str(_jpeg_name(self.folder, split, path))), cv2.COLOR_BGR2RGB)
        if split not in self._files:
            self._files[split] = os.open(self.folder / f"{split}.u8", os.O_RDONLY)
        image = np.empty((h, w, 3), np.uint8)
        if os.preadv(self._files[split], [image], offset) != image.nbytes:
            raise damaged(self.folder / f"{split}.u8", "shorter than its index says",
                          "rebuild it with ./run.sh cache-images")
        return image


def image_reader(cfg: dict, image_size: int, splits: dict | None = None, log=print) -> ImageReader:
    """The reader train and embed use: with image_cache, the cache of this image size (the given splits' missing
    or stale images cached first: by rank 0 under torchrun, the others wait); else direct decoding, reduced when
    image_scale > 0."""
    from pipeline.core import distributed

    side = short_side(cfg, image_size)
    if not cfg["image_cache"]:
        return ImageReader(side)
    spec = CacheSpec.of(cfg, image_size)
    if splits:
        if distributed.is_main():
            build_cache(splits, spec, cfg["image_cache_dir"], log=log)
        distributed.broadcast(None)  # a barrier: every rank reads the finished index
    return ImageReader(side, spec.folder(cfg["image_cache_dir"]), spec.format)


def cache_dataset(cfg: dict, image_size: int, log=print) -> dict:
    """./run.sh cache-images: the cache of every training and test image of cfg's data folder at this size."""
    from pipeline.data.layouts import load_dataset

    if image_size <= 0:
        raise UserError(f"image size {image_size}: pass --size S (the model's input side in px) or a config with "
                        "image_size set")
    ds = load_dataset(cfg["data"], cfg)
    spec = CacheSpec.of(cfg, image_size)
    t0 = time.time()
    added = build_cache({"train": ds.train, "test": ds.test}, spec, cfg["image_cache_dir"], log=log)
    folder = spec.folder(cfg["image_cache_dir"])
    mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    log(f"image cache {folder}: {len(ds.train)} train + {len(ds.test)} test images at shorter side "
        f"{spec.short_side} px ({sum(added.values())} new, {time.time() - t0:.1f}s), {mb:.0f} MB")
    return added
