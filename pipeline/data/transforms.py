"""Albumentations pipelines of SPEC 2: train (6 steps), val (resize + mask-simulating red hole), test (resize). They
end in uint8: normalisation (SPEC 2's last step) is the model's first (model/embedder.py), on its device.
The big occlusion is a real mask of <data>/train_masks (MaskPaste) when there is one, pasted on the original
image; occlusion fills (blendflip, inpaint) paint over the red before resizing, as on the test photos.
How val, gallery and test images become size x size (resize: squash | longest | shortest), their interpolation
and crop_pct (from timm's pretrained config of the backbone, or the config's): preprocessing(cfg)."""
import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np

from pipeline.core.errors import UserError
from pipeline.data.images import read_masks, red_mask
from pipeline.data.query_views import OCCLUSION_FILLS

RED = (255, 0, 0)
MASK_SOURCES = ("train_masks", "coarse_dropout")
FILL_GROW = 2  # px the red region grows by before a fill: JPEG leaves a pinkish fringe that red_mask misses
FEATHER = 2  # px either side of a blendflip seam that are blurred together
INPAINT_SIDE = 256  # inpaint at this longer side (a 1024-px photo: 0.05-0.1 s instead of 0.8 s), the fill upsampled
# Navier-Stokes, not TELEA: OpenCV's TELEA darkens a flat wall inside a big hole (a constant 900 x 600 image with a
# 500 x 300 hole comes back up to 27 levels off; 9 at 256 px); NS returns the constant and costs the same
INPAINT = cv2.INPAINT_NS


def _mask_hole(p):
    # One big red rectangle, like the occlusions on the competition's test photos.
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.5),
                           hole_width_range=(0.25, 0.5), fill=RED, p=p)


def _val_hole(cfg):
    """Validation's synthetic occlusion: one pure-red rectangle over a uniform val_hole_area share of the photo,
    aspect 1:2-2:1 (the demo's test photos' red rectangle; SPEC 2's H/4-H/2 sides cover only 6-25%, which made
    validation over-predict the test); [] or no config: SPEC 2's hole."""
    area = (cfg or {}).get("val_hole_area", [])  # a config from before the key: the hole it was made with
    if not area:
        return _mask_hole(1.0)
    if (not isinstance(area, list) or len(area) != 2
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in area)
            or not 0 < area[0] <= area[1] < 1):
        raise UserError(f"val_hole_area={area!r}: give [low, high] shares of the photo, 0 < low <= high < 1 "
                        "(e.g. [0.1, 0.4]), or [] for SPEC 2's H/4-H/2 hole")
    return A.Erasing(scale=(float(area[0]), float(area[1])), ratio=(0.5, 2.0), fill=RED, p=1.0)


def _choice(key, value, choices):
    if value not in choices:
        raise UserError(f"{key}={value!r}: not one of {', '.join(choices)}")
    return value


# --- resizing to the model's square input (issue 27 part 2) -------------------------------------------------------
RESIZES = ("squash", "longest", "shortest")
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
                  "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}
FALLBACK_INTERPOLATION, FALLBACK_CROP_PCT = "bilinear", 1.0  # a backbone whose timm config names neither
IMAGENET_MEAN = (0.485, 0.456, 0.406)


@functools.lru_cache(maxsize=None)
def pretrained_cfg(backbone: str) -> dict:
    """timm's pretrained config of a backbone name (its default tag, or the tag the name gives) as a dict; {} for a
    name timm does not know or one without a pretrained config."""
    try:
        from timm.models import get_pretrained_cfg

        pre = get_pretrained_cfg(backbone)
    except Exception:  # an unknown name or tag: the fallbacks
        return {}
    return pre.to_dict() if pre else {}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes size x size (uint8) for the model, resolved from a config (preprocessing()).
    squash: both sides to size/crop_pct, then the centre size x size (timm's crop_mode 'squash'; crop_pct 1 is
    A.Resize(size, size), the pipeline before this key existed, repr and pixels). longest: aspect kept, the longer
    side to size/crop_pct, padded to a square with `pad` (centred), then the centre size x size (timm's 'border').
    shortest: aspect kept, the shorter side to size/crop_pct, then the centre size x size (timm's eval default,
    'center'). S = floor(size / crop_pct) as timm computes it."""
    resize: str = "squash"
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    pad: tuple = (124, 116, 104)  # the mean colour: zero after normalisation (ImageNet's here)

    @property
    def flag(self) -> int:
        """cv2's interpolation flag (what Albumentations takes)."""
        return INTERPOLATIONS[self.interpolation]

    def scaled(self, size: int) -> int:
        return size if self.crop_pct == 1 else math.floor(size / self.crop_pct)

    def steps(self, size: int) -> list:
        """The Albumentations steps from any image to size x size uint8."""
        big = self.scaled(size)
        crop = [A.CenterCrop(size, size)] if big != size else []
        if self.resize == "squash":
            return [A.Resize(big, big, interpolation=self.flag), *crop]
        if self.resize == "longest":
            return [A.LongestMaxSize(max_size=big, interpolation=self.flag),
                    A.PadIfNeeded(big, big, position="center", border_mode=cv2.BORDER_CONSTANT, fill=self.pad),
                    *crop]
        return [A.SmallestMaxSize(max_size=big, interpolation=self.flag), A.CenterCrop(size, size)]


def _crop_pct(value, resize: str, pre: "dict | None") -> float:
    if value == "auto":  # timm's crop_pct where the mode crops by design (shortest); squash and longest keep it all
        return float(pre.get("crop_pct") or FALLBACK_CROP_PCT) if resize == "shortest" else 1.0
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value)
    raise UserError(f"crop_pct={value!r}: must be auto or a number in (0, 1]")


def preprocessing(cfg: "dict | None") -> Preprocessing:
    """The config's resize, interpolation and crop_pct, 'auto' resolved from timm's pretrained config of
    cfg['backbone'] (bilinear and 1.0 where it names none); a bad value is a one-line UserError. A config from
    before these keys (a packaged kernel's) reads squash, bilinear, auto: the pipeline it was made with."""
    cfg = cfg or {}
    resize = _choice("resize", cfg.get("resize", "squash"), RESIZES)
    interpolation = _choice("interpolation", cfg.get("interpolation", "bilinear"), ("auto", *INTERPOLATIONS))
    crop_pct = cfg.get("crop_pct", "auto")
    needs_timm = interpolation == "auto" or (crop_pct == "auto" and resize == "shortest") or (
        resize == "longest" and not cfg.get("mean"))
    pre = pretrained_cfg(cfg.get("backbone", "")) if needs_timm else {}
    if interpolation == "auto":
        interpolation = pre.get("interpolation") if pre.get("interpolation") in INTERPOLATIONS \
            else FALLBACK_INTERPOLATION
    mean = tuple(cfg.get("mean") or pre.get("mean") or IMAGENET_MEAN)
    return Preprocessing(resize, interpolation, _crop_pct(crop_pct, resize, pre), tuple(round(255 * m) for m in mean))


class MaskBank:
    """The masks of one folder (images.read_masks). Its repr names the folder, the count and a hash of the file
    names: a transform's repr is its embeddings' cache key."""

    def __init__(self, folder, max_side=128):
        self.folder, self.max_side = str(folder), max_side
        self.masks = read_masks(folder, max_side)
        if not self.masks:
            raise UserError(f"{folder}: no pure-red (255,0,0) region in any PNG; fix the masks or set "
                            "mask_source=coarse_dropout")
        self.digest = hashlib.sha1("\n".join(m.name for m in self.masks).encode()).hexdigest()[:8]

    def __repr__(self):
        return (f"MaskBank(folder='{self.folder}', masks={len(self.masks)}, names={self.digest}, "
                f"max_side={self.max_side})")


def mask_bank(cfg: dict) -> MaskBank | None:
    """The bank of <data>/train_masks (Hotel-ID keeps them at the data root) when mask_source is train_masks and
    that folder holds PNGs; else None: the synthetic CoarseDropout hole."""
    folder = Path(cfg["data"]) / "train_masks"
    if _choice("mask_source", cfg["mask_source"], MASK_SOURCES) == "coarse_dropout" or not any(folder.glob("*.png")):
        return None
    return MaskBank(folder)


def paste_mask(image: np.ndarray, mask) -> np.ndarray:
    """A copy of image with mask's red region (an images.Mask) painted pure red at the same relative place and
    size: its box scaled to the image's H x W, the region inside scaled with nearest."""
    h, w = image.shape[:2]
    fy0, fy1, fx0, fx1 = mask.box
    y0, x0 = min(h - 1, round(fy0 * h)), min(w - 1, round(fx0 * w))
    y1, x1 = max(y0 + 1, round(fy1 * h)), max(x0 + 1, round(fx1 * w))
    region = cv2.resize(mask.region.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    out = image.copy()
    out[y0:y1, x0:x1][region.astype(bool)] = RED
    return out


class MaskPaste(A.ImageOnlyTransform):
    """A random mask of the bank pasted red (paste_mask); seeded by the Compose like every other step."""

    def __init__(self, bank: MaskBank, p: float = 0.5):
        super().__init__(p=p)
        self.bank = bank

    def get_params(self):
        return {"index": self.py_random.randrange(len(self.bank.masks))}

    def apply(self, img, index=0, **params):
        return paste_mask(img, self.bank.masks[index])


def _reflect(t, n):
    # symmetric reflection at the image border (..., 1, 0 | 0, 1, ...), once is enough for a box inside the image
    return np.clip(np.where(t < 0, -t - 1, np.where(t >= n, 2 * n - 1 - t, t)), 0, n - 1)


def _blendflip(image, hole):
    out, free = image.astype(np.float32), ~hole
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hole.astype(np.uint8), connectivity=8)
    H, W = hole.shape
    for k in range(1, n):
        x0, y0, w, h = (int(v) for v in stats[k, :4])
        y1, x1, i, j = y0 + h, x0 + w, np.arange(h), np.arange(w)
        ys, xs = slice(y0, y1), slice(x0, x1)
        num, den = np.zeros((h, w, 3), np.float32), np.zeros((h, w, 1), np.float32)
        for src, dist, rows in ((_reflect(y0 - 1 - i, H), i + 1, True), (_reflect(y1 + h - 1 - i, H), h - i, True),
                                (_reflect(x0 - 1 - j, W), j + 1, False), (_reflect(x1 + w - 1 - j, W), w - j, False)):
            copy, ok = (out[src, xs], free[src, xs]) if rows else (out[ys, src], free[ys, src])
            weight = (ok / (dist[:, None] if rows else dist[None, :]))[..., None].astype(np.float32)
            num, den = num + weight * copy, den + weight
        fill = num / np.maximum(den, 1e-6)
        if not den.all():  # no mirror source at all (a region spanning the image): the mean of what is left
            fill[den[..., 0] == 0] = out[free].mean(0) if free.any() else 127.5
        part = labels[ys, xs] == k
        out[ys, xs][part] = fill[part]
        free[ys, xs] |= part
        # feather: blur a band of FEATHER px either side of the seam (in a crop with room for the kernel)
        g = 2 * FEATHER
        a, b, c, d = max(0, y0 - g), min(H, y1 + g), max(0, x0 - g), min(W, x1 + g)
        comp, kernel = (labels[a:b, c:d] == k).astype(np.uint8), np.ones((g + 1, g + 1), np.uint8)
        band = (cv2.dilate(comp, kernel) > 0) & ~(cv2.erode(comp, kernel, borderValue=1) > 0)
        out[a:b, c:d][band] = cv2.GaussianBlur(out[a:b, c:d], (g + 1, g + 1), 0)[band]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _inpaint(image, hole):
    h, w = hole.shape
    f = min(1.0, INPAINT_SIDE / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if f < 1 else image
    # a reduced pixel is a hole if any red pixel lies under it (area averaging mixes red into its neighbours)
    small_hole = cv2.resize(hole.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0 if f < 1 else hole
    filled = cv2.inpaint(np.ascontiguousarray(small), small_hole.astype(np.uint8), 3, INPAINT)
    up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR) if f < 1 else filled
    out = image.copy()
    out[hole] = up[hole]
    return out


def fill_occlusion(image: np.ndarray, method: str) -> np.ndarray:
    """The red regions of a uint8 RGB image (red_mask, grown by FILL_GROW px) painted over; a new array.
    blendflip (Hotel-ID 2022 1st place): each region's bounding box gets the mirror image of the pixels beyond each
    of its four sides (reflected at the image border; red sources skipped), blended with weights 1/distance to that
    side, and the seam blurred over FEATHER px. inpaint: cv2.inpaint (Navier-Stokes, radius 3) at INPAINT_SIDE px,
    the fill upsampled into the region."""
    if method not in OCCLUSION_FILLS[1:]:
        raise ValueError(f"fill_occlusion method {method!r}")
    kernel = np.ones((2 * FILL_GROW + 1,) * 2, np.uint8)
    hole = cv2.dilate(red_mask(image).astype(np.uint8), kernel) > 0
    if not hole.any():
        return image
    return _blendflip(image, hole) if method == "blendflip" else _inpaint(image, hole)


class FillOcclusion(A.ImageOnlyTransform):
    """fill_occlusion as a pipeline step, with probability p."""

    def __init__(self, method: str, p: float = 0.5):
        super().__init__(p=p)
        self.method = method

    def apply(self, img, **params):
        return fill_occlusion(img, self.method)


def _fill(method, p):
    return [FillOcclusion(_choice("fill", method, OCCLUSION_FILLS), p)] if method != "none" else []


def build_transform(kind: str, cfg: dict, size: int, fill: str = "none") -> A.Compose:
    """kind: train | val | test. Output: uint8 HWC array (the dataset makes it CHW). The occlusion (a real mask,
    or the synthetic hole with mask_source=coarse_dropout or without masks) and any fill come first, on the
    original image. fill: none | blendflip | inpaint, the query's fill (val and test; train reads occlusion_fill
    and occlusion_fill_p). coarse_dropout with no fill is the 7th place's pipelines, exactly as before. val and
    test end in preprocessing(cfg)'s steps (resize, interpolation, crop_pct); train's RandomResizedCrop takes its
    interpolation."""
    if kind not in ("train", "val", "test"):
        raise ValueError(kind)
    prep = preprocessing(cfg)
    if kind == "test":
        return A.Compose([*_fill(fill, 1.0), *prep.steps(size)])
    bank = mask_bank(cfg)
    if kind == "val":
        if bank is None and fill == "none" and prep.resize == "squash" and prep.crop_pct == 1:
            # the synthetic hole after a plain squash, as before (its sides are fractions of the image's either way)
            return A.Compose([*prep.steps(size), _val_hole(cfg)])
        # on the photo before resizing: never on longest's padding, cut by a crop as a test photo's would be
        return A.Compose([MaskPaste(bank, 1.0) if bank else _val_hole(cfg), *_fill(fill, 1.0), *prep.steps(size)])
    method, fill_p = _choice("occlusion_fill", cfg["occlusion_fill"], OCCLUSION_FILLS), cfg["occlusion_fill_p"]
    if not 0.0 <= fill_p <= 1.0:
        raise UserError(f"occlusion_fill_p={fill_p}: must be between 0 and 1 (a probability per training image)")
    steps = [
        A.RandomResizedCrop(size=(size, size), scale=(cfg["crop_scale_min"], 1.0), interpolation=prep.flag),
        A.HorizontalFlip(p=0.5),
        A.OneOf([A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=1.0),
                 A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.1, p=1.0),
                 A.RandomGamma(p=1.0)], p=cfg["aug_p_color"]),
        A.Affine(translate_percent=(-0.1, 0.1), scale=1.0, rotate=(-15, 15), p=cfg["aug_p_affine"]),
        A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.125, 0.25),
                        hole_width_range=(0.125, 0.25), fill=RED, p=cfg["aug_p_dropout"]),
    ]
    if bank is None and method == "none":
        return A.Compose([*steps, _mask_hole(cfg["mask_p"])])
    occlusion = MaskPaste(bank, cfg["mask_p"]) if bank else _mask_hole(cfg["mask_p"])
    return A.Compose([occlusion, *_fill(method, fill_p), *steps])


def describe(transform: object) -> str:
    """A stable text of a pipeline, for cache keys."""
    return repr(transform)


def apply(transform: A.Compose, image: np.ndarray, seed: int) -> np.ndarray:
    """Apply with a per-sample seed: the result depends only on (image, seed), whatever the worker."""
    transform.set_random_seed(int(seed))
    return np.ascontiguousarray(transform(image=image)["image"].transpose(2, 0, 1))


# --- multi-crop queries (SPEC Appendix D, the 7th-place Hotel-ID variant) ---------------------------------------
MAX_RED = 0.5  # a crop more than half red (the occlusion rectangle) is dropped


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
    """The query views of one image: [val only: the red hole of the val pipeline (a real mask of cfg's data
    folder when build_transform would use one), drawn on the whole image (seeded per sample, like `apply`), BEFORE
    cropping] -> [fill: the occlusion filled] -> the n crops -> drop the mostly-red ones -> each kept crop resized
    to the model size as build_transform's val and test pipelines resize (preprocessing(cfg); uint8, the model
    normalises). If every crop is dropped, the whole image is the one view.
    Without cfg and fill it is the synthetic hole, as before (its repr too)."""

    def __init__(self, kind, n, size, cfg=None, fill="none"):
        if kind not in ("val", "test") or n not in (5, 9):
            raise ValueError(f"MultiCrop({kind!r}, {n!r})")
        self.kind, self.n = kind, n
        bank = mask_bank(cfg) if cfg is not None and kind == "val" else None
        steps = ([MaskPaste(bank, 1.0) if bank else _val_hole(cfg)] if kind == "val" else []) + _fill(fill, 1.0)
        self.hole = A.Compose(steps) if steps else None
        self.finish = A.Compose(preprocessing(cfg).steps(size))  # each crop as build_transform resizes an image

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
