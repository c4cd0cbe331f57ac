"""Reading images as RGB uint8 arrays with OpenCV."""
import os

import cv2

from ..errors import UserError


def read_image(path):
    """RGB uint8 (H, W, 3). cv2.IMREAD_COLOR applies the EXIF orientation and turns grayscale, RGBA, CMYK
    and 16-bit images into 8-bit BGR."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: image file not found")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"{path}: not a readable image (corrupt, empty or not an image); remove or replace it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
