"""The competition's masks (MaskPaste) and occlusion fills (blendflip, inpaint): hand computations, no training."""
import pickle

import albumentations as A
import cv2
import numpy as np
import pytest

from pipeline.config import CONFIG_DIR, _read_yaml
from pipeline.core.errors import UserError
from pipeline.data import transforms as T
from pipeline.data.images import read_image, read_masks, red_mask

GREY = (90, 120, 150)


def _cfg(data, **kw):
    return {**_read_yaml(CONFIG_DIR / "default.yaml"), "data": str(data), **kw}


def _write_mask(path, h, w, box, background=0):
    img = np.full((h, w, 3), background, np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = T.RED
    cv2.imwrite(str(path), img[..., ::-1])


def test_paste_keeps_the_masks_shape_and_red_fill(tmp_path):
    masks = tmp_path / "train_masks"
    masks.mkdir()
    _write_mask(masks / "a.png", 100, 200, (20, 60, 50, 150))  # rows 0.2-0.6, columns 0.25-0.75
    _write_mask(masks / "b.png", 1000, 800, (100, 900, 0, 400), background=255)  # bigger than max_side: exact box
    _write_mask(masks / "c.png", 50, 50, (0, 0, 0, 0))  # no red: skipped
    bank = T.MaskBank(masks)
    assert [m.name for m in bank.masks] == ["a.png", "b.png"]
    for (h, w), mask, (y0, y1, x0, x1) in [((300, 400), 0, (60, 180, 100, 300)), ((50, 60), 0, (10, 30, 15, 45)),
                                            ((301, 97), 1, (30, 271, 0, 48))]:
        image = np.full((h, w, 3), GREY, np.uint8)
        out = T.MaskPaste(bank, p=1.0).apply(image, index=mask)  # the mask a seed would draw: given here
        inside = np.zeros((h, w), bool)
        inside[y0:y1, x0:x1] = True
        assert (out[inside] == T.RED).all() and (out[~inside] == GREY).all(), (h, w, mask)
        assert (image == GREY).all()  # the input is not painted over
    (masks / "a.png").unlink(), (masks / "b.png").unlink()
    with pytest.raises(UserError, match="train_masks: no pure-red .* in any PNG; .* set mask_source=coarse_dropout"):
        T.mask_bank(_cfg(tmp_path))


def test_paste_is_seeded_and_pickles_with_a_stable_repr(tiny_data):
    cfg = _cfg(tiny_data / "data")
    bank = T.mask_bank(cfg)
    assert bank is not None and len(bank.masks) == len(list((tiny_data / "data" / "train_masks").glob("*.png")))
    paste = A.Compose([T.MaskPaste(bank, p=1.0)])
    image = np.full((64, 80, 3), GREY, np.uint8)
    runs = [T.apply(paste, image, seed) for seed in (1, 1, 2, 3, 4)]
    assert (runs[0] == runs[1]).all() and any((r != runs[0]).any() for r in runs[2:])
    again = pickle.loads(pickle.dumps(paste))
    assert repr(again) == repr(paste) and (T.apply(again, image, 1) == runs[0]).all()
    assert f"MaskBank(folder='{tiny_data / 'data' / 'train_masks'}', masks={len(bank.masks)}, names=" in repr(paste)


def _symmetric_image():
    """A smooth image mirror-symmetric about each side of the grown red box: inside it, every mirrored copy is the
    original. Rows: cos(pi (y - gy0 + 1/2) / gh), symmetric about gy0 - 1/2 and gy1 - 1/2; columns likewise."""
    h, w, (y0, y1, x0, x1), g = 120, 160, (40, 80, 60, 110), T.FILL_GROW
    gy0, gy1, gx0, gx1 = y0 - g, y1 + g, x0 - g, x1 + g
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = 120 + 50 * np.cos(np.pi * (yy - gy0 + 0.5) / (gy1 - gy0)) + 30 * np.cos(np.pi * (xx - gx0 + 0.5) / (gx1 - gx0))
    truth = np.stack([f, f * 0.8, f * 0.6], -1).round().astype(np.uint8)
    occluded = truth.copy()
    occluded[y0:y1, x0:x1] = T.RED
    return truth, occluded, (gy0, gy1, gx0, gx1)


def test_blendflip_reproduces_a_mirror_symmetric_image():
    truth, occluded, (gy0, gy1, gx0, gx1) = _symmetric_image()
    out = T.fill_occlusion(occluded, "blendflip")
    assert not red_mask(out).any()
    err = np.abs(out.astype(int) - truth)
    assert err[gy0:gy1, gx0:gx1].max() <= 2  # the mirrors are exact; the feathered seam blurs a smooth image
    assert err.max() <= 2 and (out[:gy0 - T.FEATHER] == truth[:gy0 - T.FEATHER]).all()  # away from the seam: as is
    # a box in the corner: the sides beyond the image border are reflected inside it (red), so skipped
    corner = truth.copy()
    corner[:50, :70] = T.RED
    assert not red_mask(T.fill_occlusion(corner, "blendflip")).any()


def test_inpaint_of_a_constant_image_is_the_constant():
    image = np.full((600, 900, 3), GREY, np.uint8)  # reduced to INPAINT_SIDE before inpainting
    image[100:400, 200:700] = T.RED
    out = T.fill_occlusion(image, "inpaint")
    assert np.abs(out.astype(int) - GREY).max() <= 1
    small = np.full((40, 50, 3), GREY, np.uint8)
    small[5:20, 10:30] = T.RED
    assert np.abs(T.fill_occlusion(small, "inpaint").astype(int) - GREY).max() <= 1


def _old_build_transform(kind, cfg, size):
    """build_transform as it was before train_masks and fills (the 7th place's pipelines)."""
    hole = lambda p: A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.25, 0.5),  # noqa: E731
                                     hole_width_range=(0.25, 0.5), fill=T.RED, p=p)
    if kind == "train":
        return A.Compose([
            A.RandomResizedCrop(size=(size, size), scale=(cfg["crop_scale_min"], 1.0)),
            A.HorizontalFlip(p=0.5),
            A.OneOf([A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=1.0),
                     A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.1, p=1.0),
                     A.RandomGamma(p=1.0)], p=cfg["aug_p_color"]),
            A.Affine(translate_percent=(-0.1, 0.1), scale=1.0, rotate=(-15, 15), p=cfg["aug_p_affine"]),
            A.CoarseDropout(num_holes_range=(1, 6), hole_height_range=(0.125, 0.25),
                            hole_width_range=(0.125, 0.25), fill=T.RED, p=cfg["aug_p_dropout"]),
            hole(cfg["mask_p"])])
    return A.Compose([A.Resize(size, size), hole(1.0)] if kind == "val" else [A.Resize(size, size)])


def test_default_pipelines_are_unchanged(tiny_data, tmp_path):
    image = read_image(next((tiny_data / "data" / "train_images").glob("*/*.jpg")))
    spec = {"val_hole_area": []}  # validation's SPEC 2 hole (the default is the test's 10-40% red rectangle)
    for cfg in (_cfg(tiny_data / "data", mask_source="coarse_dropout", **spec), _cfg(tmp_path, **spec)):  # no masks
        for kind in ("train", "val", "test"):
            new, old = T.build_transform(kind, cfg, 48), _old_build_transform(kind, cfg, 48)
            assert T.describe(new) == T.describe(old), kind
            for seed in (0, 7):
                assert (T.apply(new, image, seed) == T.apply(old, image, seed)).all(), (kind, seed)
        hole = A.Compose([_old_build_transform("val", cfg, 8).transforms[1]])
        old_repr = (f"MultiCrop(n=5, max_red={T.MAX_RED}, red='R>=200,G<=60,B<=60', hole={hole!r}, "
                    f"crop={A.Compose([A.Resize(32, 32)])!r})")
        assert repr(T.MultiCrop("val", 5, 32)) == repr(T.MultiCrop("val", 5, 32, cfg)) == old_repr


@pytest.mark.parametrize("key, value, choices", [("occlusion_fill", "blur", "none, blendflip, inpaint"),
                                                 ("mask_source", "masks", "train_masks, coarse_dropout")])
def test_a_bad_value_is_a_one_line_user_error(tmp_path, key, value, choices):
    with pytest.raises(UserError) as e:
        T.build_transform("train", _cfg(tmp_path, **{key: value}), 32)
    assert str(e.value) == f"{key}='{value}': not one of {choices}"
    with pytest.raises(UserError, match="^fill='x': not one of none, blendflip, inpaint$"):
        T.build_transform("test", _cfg(tmp_path), 32, fill="x")
    with pytest.raises(UserError, match="^occlusion_fill_p=1.5: must be between 0 and 1"):
        T.build_transform("train", _cfg(tmp_path, occlusion_fill_p=1.5), 32)


def test_pipelines_on_the_synthetic_dataset_use_its_masks(tiny_data):
    data = tiny_data / "data"
    cfg = _cfg(data, occlusion_fill="blendflip", occlusion_fill_p=0.5, mask_p=0.8)
    bank = T.mask_bank(cfg)
    train, val = T.build_transform("train", cfg, 32), T.build_transform("val", cfg, 32)
    paste, fill = train.transforms[:2]
    assert isinstance(paste, T.MaskPaste) and paste.p == 0.8 and paste.bank.digest == bank.digest
    assert isinstance(fill, T.FillOcclusion) and fill.p == 0.5 and fill.method == "blendflip"
    assert [t.num_holes_range for t in train.transforms if isinstance(t, A.CoarseDropout)] == [(1, 6)]  # small holes
    # every val query: one mask of the bank on the original image, then the resize (hand-made, mask by mask)
    image = read_image(next((data / "train_images").glob("*/*.jpg")))
    resize = A.Compose([A.Resize(32, 32)])
    candidates = [resize(image=T.paste_mask(image, m))["image"] for m in bank.masks]
    for seed in range(3):
        got = T.apply(val, image, seed).transpose(1, 2, 0)
        assert any((got == c).all() for c in candidates), seed
    filled = T.apply(T.build_transform("val", cfg, 32, fill="inpaint"), image, 0).transpose(1, 2, 0)
    assert not red_mask(filled).any()
    assert repr(T.MultiCrop("val", 5, 32, cfg)).count("MaskPaste(p=1.0, bank=MaskBank(") == 1
    assert read_masks(data / "train_masks") is bank.masks  # read once per process
