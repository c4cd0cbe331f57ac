"""Albumentations pipelines of SPEC 2: train (7 steps), val (resize + mask-simulating red hole), test (resize)."""
import albumentations as A
import numpy as np

RED = (255, 0, 0)


def _mask_hole(p):
    # One big red rectangle, like the occlusions on the competition's test photos.
    return A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.5),
                           hole_width_range=(0.25, 0.5), fill=RED, p=p)


def build_transform(kind, cfg, size, mean, std):
    """kind: train | val | test. Output: normalised float32 HWC array (the dataset makes it CHW)."""
    norm = A.Normalize(mean=mean, std=std)
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
            norm,
        ]
    elif kind == "val":
        steps = [A.Resize(size, size), _mask_hole(1.0), norm]
    elif kind == "test":
        steps = [A.Resize(size, size), norm]
    else:
        raise ValueError(kind)
    return A.Compose(steps)


def describe(transform):
    """A stable text of a pipeline, for cache keys."""
    return repr(transform)


def apply(transform, image, seed):
    """Apply with a per-sample seed: the result depends only on (image, seed), whatever the worker."""
    transform.set_random_seed(int(seed))
    return np.ascontiguousarray(transform(image=image)["image"].transpose(2, 0, 1))
