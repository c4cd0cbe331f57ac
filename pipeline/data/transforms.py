"""Albumentations pipelines of SPEC 2: train (6 steps), val (resize + mask-simulating red hole), test (resize). They
end in uint8: normalisation (SPEC 2's last step) is the model's first (model/embedder.py), on its device."""
import albumentations as A
import numpy as np

RED = (255, 0, 0)


def _mask_hole(p):
    # One big red rectangle, like the occlusions on the competition's test photos.
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.5),
                           hole_width_range=(0.25, 0.5), fill=RED, p=p)


def build_transform(kind: str, cfg: dict, size: int) -> A.Compose:
    """kind: train | val | test. Output: uint8 HWC array (the dataset makes it CHW)."""
    if kind == "train":
        steps = [
            A.RandomResizedCrop(size=(size, size), scale=(cfg["crop_scale_min"], 1.0)),
            A.HorizontalFlip(p=0.5),
            A.OneOf([A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=1.0),
                     A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.1, p=1.0),
                     A.RandomGamma(p=1.0)], p=cfg["aug_p_color"]),
            A.Affine(translate_percent=(-0.1, 0.1), scale=1.0, rotate=(-15, 15), p=cfg["aug_p_affine"]),
            A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.125, 0.25),
                            hole_width_range=(0.125, 0.25), fill=RED, p=cfg["aug_p_dropout"]),
            _mask_hole(cfg["mask_p"]),
        ]
    elif kind == "val":
        steps = [A.Resize(size, size), _mask_hole(1.0)]
    elif kind == "test":
        steps = [A.Resize(size, size)]
    else:
        raise ValueError(kind)
    return A.Compose(steps)


def describe(transform: object) -> str:
    """A stable text of a pipeline, for cache keys."""
    return repr(transform)


def apply(transform: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply with a per-sample seed: the result depends only on (image, seed), whatever the worker."""
    transform.set_random_seed(int(seed))
    return np.ascontiguousarray(transform(image=image)["image"].transpose(2, 0, 1))


# --- multi-crop queries (SPEC Appendix D, the 7th-place Hotel-ID variant) ---------------------------------------
MULTICROPS = (0, 5, 9)  # 0 = off
MAX_RED = 0.5  # a crop more than half red (the occlusion rectangle) is dropped


def red_mask(image: np.ndarray) -> np.ndarray:
    """Pixels of the red occlusion fill. The fill is pure (255, 0, 0); JPEG perturbs it, hence the margins."""
    return (image[..., 0] >= 200) & (image[..., 1] <= 60) & (image[..., 2] <= 60)


def crop_boxes(h: int, w: int, n: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) pixel boxes of the n crops of an h x w image. n=5: the four corner crops of 60% side
    (of the height and of the width) and the centre crop of the same size; n=9: a 3x3 grid of 50%-side crops
    at a 25% stride (so neighbours overlap by half)."""
    if n == 5:
        side, starts = 0.6, [(0.0, 0.0), (0.0, 0.4), (0.4, 0.0), (0.4, 0.4), (0.2, 0.2)]
    elif n == 9:
        side, starts = 0.5, [(0.25 * i, 0.25 * j) for i in range(3) for j in range(3)]
    else:
        raise ValueError(f"multicrop {n!r}: not one of 5, 9")
    boxes = []
    for fy, fx in starts:
        y0, x0 = round(fy * h), round(fx * w)
        y1, x1 = min(h, max(y0 + 1, round((fy + side) * h))), min(w, max(x0 + 1, round((fx + side) * w)))
        boxes.append((y0, y1, x0, x1))
    return boxes


def select_crops(image: np.ndarray, n: int, max_red: float = MAX_RED) -> tuple[list[np.ndarray], list[tuple]]:
    """(kept crops [uint8 HWC views], [(box, red fraction, kept)] for all n crops): a crop whose red fraction is
    above max_red is dropped."""
    red = red_mask(image)
    kept, info = [], []
    for y0, y1, x0, x1 in crop_boxes(image.shape[0], image.shape[1], n):
        frac = float(red[y0:y1, x0:x1].mean())
        keep = frac <= max_red
        info.append(((y0, y1, x0, x1), frac, keep))
        if keep:
            kept.append(image[y0:y1, x0:x1])
    return kept, info


class MultiCrop:
    """The query views of one image: [val only: the red hole of the val pipeline, drawn on the whole image
    (seeded per sample, like `apply`), BEFORE cropping] -> the n crops -> drop the mostly-red ones -> each kept
    crop resized to the model size (uint8; the model normalises). If every crop is dropped, the whole image is the
    one view."""

    def __init__(self, kind, n, size):
        if kind not in ("val", "test") or n not in (5, 9):
            raise ValueError(f"MultiCrop({kind!r}, {n!r})")
        self.kind, self.n = kind, n
        self.hole = A.Compose([_mask_hole(1.0)]) if kind == "val" else None
        self.finish = A.Compose([A.Resize(size, size)])

    def __repr__(self):  # stable text for cache keys (like describe())
        return (f"MultiCrop(n={self.n}, max_red={MAX_RED}, red='R>=200,G<=60,B<=60', hole={self.hole!r}, "
                f"crop={self.finish!r})")

    def views(self, image: np.ndarray, seed: int) -> np.ndarray:
        """uint8 (k, C, S, S), k >= 1: the kept crops of image (uint8 RGB HWC)."""
        if self.hole is not None:
            self.hole.set_random_seed(int(seed))
            image = self.hole(image=image)["image"]
        crops, _ = select_crops(image, self.n)
        crops = crops or [image]
        return np.stack([self.finish(image=np.ascontiguousarray(c))["image"].transpose(2, 0, 1) for c in crops])
