"""Reading images as RGB uint8 arrays with OpenCV."""
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


def _imread_quiet(path):
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
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    _CAPTURE.seek(0)
    return img, " ".join(_CAPTURE.read().decode(errors="replace").split())


def read_image(path: str | Path) -> "np.ndarray":
    """RGB uint8 (H, W, 3). cv2.IMREAD_COLOR applies the EXIF orientation and turns grayscale, RGBA, CMYK
    and 16-bit images into 8-bit BGR. An unreadable file is a one-line UserError naming it; a file the decoder
    could only partly read (a truncated JPEG) is used as decoded, with a one-line warning."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: image file not found")
    img, messages = _imread_quiet(path)
    if img is None:
        why = f" ({messages})" if messages else ""
        raise UserError(f"{path}: not a readable image{why} (corrupt, empty or not an image); remove or replace it")
    if messages:
        print(f"warning: {path}: {messages}; using what could be decoded", file=sys.stderr)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
