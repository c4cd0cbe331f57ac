"""Reading images as RGB uint8 arrays with OpenCV: whole, or reduced so the shorter side is a given length (a large
JPEG decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling, then resized with area averaging)."""
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import cv2

from pipeline.errors import UserError

if TYPE_CHECKING:
    import numpy as np

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


def read_image(path: str | Path, short_side: int = 0) -> "np.ndarray":
    """RGB uint8 (H, W, 3). cv2.IMREAD_COLOR applies the EXIF orientation and turns grayscale, RGBA, CMYK
    and 16-bit images into 8-bit BGR. short_side > 0: an image whose shorter side is longer is returned with that
    shorter side (aspect kept; decoded at the smallest JPEG scale still at least that long). An unreadable file is
    a one-line UserError naming it; a file the decoder could only partly read (a truncated JPEG) is used as
    decoded, with a one-line warning."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: image file not found")
    factor = _decode_factor(path, short_side) if short_side else 1
    img, messages = _imread_quiet(path, _REDUCED[factor])
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


def _decode_factor(path, short_side):
    """The largest JPEG decode scale 1/f (f in 8, 4, 2) that keeps the shorter side >= short_side: read from the
    header alone (a 90-degree EXIF rotation swaps the sides, not the shorter one)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return 1  # cv2's reduced modes decode other formats whole, then resize: no gain
            shorter = min(im.size)
    except Exception:  # not readable by PIL: cv2's full decode gives the one-line error (or reads it)
        return 1
    return next((f for f in (8, 4, 2) if shorter // f >= short_side), 1)
