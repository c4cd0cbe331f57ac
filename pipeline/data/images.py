"""Reading images as RGB uint8 arrays with OpenCV: whole, or reduced so the shorter side is a given length (a large
JPEG decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, then resized with area averaging); and the red
regions of the competition's masks (read_masks). OpenCV refuses an image whose header claims more pixels than
CV_IO_MAX_IMAGE_PIXELS (2^30 by default) at the decode scale: a JPEG that large is still read reduced (the scale
chosen from its header), anything else is a one-line error naming the size."""
import contextlib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from pipeline.core.errors import UserError

_CAPTURE = None  # per-process temp file that takes libjpeg/libpng's stderr messages during a decode


# cv2's imread flag of each JPEG decode scale 1/f
_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def _imread_quiet(path, flags=cv2.IMREAD_COLOR):
    """cv2.imread with the C decoders' stderr messages ("Premature end of JPEG file") captured, not printed:
    (image or None, their text). Only fd 2 is swapped, and only for the decode."""
    global _CAPTURE
    if _CAPTURE is None:
        _CAPTURE = tempfile.TemporaryFile()
    _CAPTURE.seek(0)
    _CAPTURE.truncate()
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(_CAPTURE.fileno(), 2)
    try:
        img = cv2.imread(str(path), flags)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    _CAPTURE.seek(0)
    return img, " ".join(_CAPTURE.read().decode(errors="replace").split())


def read_image(path: str | Path, short_side: int = 0) -> np.ndarray:
    """RGB uint8 (H, W, 3). cv2.IMREAD_COLOR applies the EXIF orientation and turns grayscale, RGBA, CMYK
    and 16-bit images into 8-bit BGR. short_side > 0: an image whose shorter side is longer is returned with that
    shorter side (aspect kept; decoded at the smallest JPEG scale still at least that long). An unreadable file is
    a one-line UserError naming it, as is one larger than OpenCV decodes (its header's size named); a file the
    decoder could only partly read (a truncated JPEG) is used as decoded, with a one-line warning."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: image file not found")
    header = _header(path) if short_side else None
    factor = _decode_factor(header, short_side)
    try:
        img, messages = _imread_quiet(path, _REDUCED[factor])
    except cv2.error as e:  # OpenCV asserts, rather than returning None, on a size past its limit
        raise _refused(path, header or _header(path), factor, short_side, e) from None
    if img is None:
        why = f" ({messages})" if messages else ""
        raise UserError(f"{path}: not a readable image{why} (corrupt, empty or not an image); remove or replace it")
    if messages:
        print(f"warning: {path}: {messages}; using what could be decoded", file=sys.stderr)
    if short_side and min(img.shape[:2]) > short_side:
        h, w = img.shape[:2]
        scale = short_side / min(h, w)
        width, height = (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)  # area averaging: no aliasing
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@contextlib.contextmanager
def _pil_open(path):
    """PIL.Image.open without PIL's decompression-bomb refusal (past 179 Mpx), which would hide the size of exactly
    the images whose size matters; opening decodes no pixels, and read_image decides what may be decoded."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _header(path):
    """(format, width, height) from the file's header alone, or None when PIL cannot read it (cv2 then gives the
    one-line error, or reads it)."""
    try:
        with _pil_open(path) as im:
            return (im.format, *im.size)
    except Exception:
        return None


def _decode_factor(header, short_side):
    """The largest JPEG decode scale 1/f (f in 8, 4, 2) that keeps the shorter side >= short_side (a 90-degree EXIF
    rotation swaps the sides, not the shorter one); 1 for other formats: cv2's reduced modes decode them whole, then
    resize, so there is no gain."""
    if not short_side or header is None or header[0] != "JPEG":
        return 1
    shorter = min(header[1:])
    return next((f for f in (8, 4, 2) if shorter // f >= short_side), 1)


def _refused(path, header, factor, short_side, err) -> UserError:
    """The one-line error for an image cv2 refused with an exception (err): mostly a size past its limits, which it
    checks at the decode scale, so a JPEG past them in full is still read reduced."""
    limit = re.search(r"CV_IO_MAX_IMAGE_[A-Z]+", str(err))
    if header is None or limit is None:
        return UserError(f"{path}: not a readable image (OpenCV: {str(err).strip().splitlines()[-1]}); remove or "
                         "replace it")
    fmt, width, height = header
    default = "2^30 px" if limit.group() == "CV_IO_MAX_IMAGE_PIXELS" else "2^20 px a side"
    scale = f" at 1/{factor} scale" if factor > 1 else ""
    other = ", or set image_scale > 0 to decode this JPEG reduced" if fmt == "JPEG" and not short_side else ""
    return UserError(f"{path}: its header claims {width} x {height} px, more than OpenCV decodes{scale} "
                     f"({limit.group()}: {default} by default); remove or replace it{other}")


# --- the competition's masks (train_masks/*.png: one pure-red region each, the shape of the test occlusions) ---
class Mask(NamedTuple):
    name: str  # the PNG's file name
    box: tuple[float, float, float, float]  # (y0, y1, x0, x1) of the red region as fractions of the mask's H, W
    region: np.ndarray  # bool: the red pixels inside the box, downsampled (nearest) to at most max_side a side;
    # a full rectangle (the usual mask) is kept as one True pixel, which nearest scaling turns into any box


_MASKS: dict = {}  # per process: (folder, max_side, listing) -> [Mask]


def read_masks(folder: str | Path, max_side: int = 128) -> list[Mask]:
    """The red region of every folder/*.png, in name order (a PNG without red is skipped); read once per process
    (a changed listing, by name, size and mtime, reads again), in parallel processes when there are many. The box
    is measured at full resolution, so a mask lands on a photo to the pixel whatever max_side is."""
    paths = sorted(Path(folder).glob("*.png"))
    stats = [p.stat() for p in paths]
    listing = tuple((p.name, s.st_size, s.st_mtime_ns) for p, s in zip(paths, stats))
    key = (str(Path(folder).resolve()), max_side, listing)
    if key not in _MASKS:
        from joblib import Parallel, delayed


        workers = default_workers() if len(paths) > 500 else 1  # 300 masks read in well under a second serially
        masks = Parallel(n_jobs=workers, batch_size=64)(delayed(_read_mask)(p, max_side) for p in paths)
        _MASKS.clear()  # one bank per process is the use; a new folder replaces it
        _MASKS[key] = [m for m in masks if m is not None]
    return _MASKS[key]


def red_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of the red occlusion fill. The fill is pure (255, 0, 0); JPEG perturbs it, hence the margins."""
    return (image[..., 0] >= 200) & (image[..., 1] <= 60) & (image[..., 2] <= 60)


def _read_mask(path, max_side):
    red = red_mask(read_image(path))
    ys, xs = np.nonzero(red.any(1))[0], np.nonzero(red.any(0))[0]
    if not len(ys):
        return None
    (h, w), (y0, y1, x0, x1) = red.shape, (int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
    region = red[y0:y1, x0:x1]
    f = max_side / max(region.shape)
    if region.all():
        region = np.ones((1, 1), bool)
    elif f < 1.0:
        size = (max(1, round(region.shape[1] * f)), max(1, round(region.shape[0] * f)))
        region = cv2.resize(region.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return Mask(path.name, (y0 / h, y1 / h, x0 / w, x1 / w), region)


def default_workers() -> int:
    """Worker processes for image decoding: the CPUs this process may use, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
