"""resize (squash | longest | shortest), interpolation and crop_pct (issue 27 part 2): the geometry of each mode on a
hand-computed 40 x 20 image, 'auto' from timm's pretrained config, training's interpolation, the same steps in the
val pipeline and multi-crop, the cache key, and bad values as one-line errors. No model, no training: seconds."""
import albumentations as A
import cv2
import numpy as np
import pytest

from pipeline.config import CONFIG_DIR, _read_yaml, load_config
from pipeline.core.errors import UserError
from pipeline.data import transforms as T

SIZE = 8
MEAN = [0.2, 0.4, 0.6]  # the pad of longest: round(255 x mean) = (51, 102, 153), no cell of the image's colours
PAD = (51, 102, 153)
TOP, BOTTOM = 70, 170  # green of the upper and lower half


def _cfg(tmp_path, **kw):
    # tmp_path as data: no train_masks, so val draws the synthetic hole (coarse_dropout)
    return {**_read_yaml(CONFIG_DIR / "default.yaml"), "data": str(tmp_path), "mean": MEAN, **kw}


def _image():
    """20 rows x 40 columns: 8 vertical stripes of 5 px (red 20, 40, ..., 160 = stripe 0 ... 7), green TOP in rows
    0-9 and BOTTOM in rows 10-19, blue 100. At the scales below every bilinear output pixel reads two source pixels
    of one cell (stripe x half), so each output pixel is exactly one cell's colour."""
    img = np.zeros((20, 40, 3), np.uint8)
    img[..., 0] = 20 + 20 * (np.arange(40) // 5)
    img[:10, :, 1], img[10:, :, 1] = TOP, BOTTOM
    img[..., 2] = 100
    return img


def _cells(out):
    """(stripe index per column, half per row) of an output that holds only image cells; asserts it does."""
    assert (out[..., 2] == 100).all() and ((out[..., 0] - 20) % 20 == 0).all()
    stripes = (out[..., 0].astype(int) - 20) // 20
    assert (stripes == stripes[0]).all()  # stripes are vertical
    halves = np.where(out[..., 1] == TOP, "t", np.where(out[..., 1] == BOTTOM, "b", "?"))
    assert (halves == halves[:, :1]).all() and "?" not in halves
    return stripes[0].tolist(), "".join(halves[:, 0])


def _run(tmp_path, **kw):
    return T.apply(T.build_transform("test", _cfg(tmp_path, **kw), SIZE), _image(), 0).transpose(1, 2, 0)


def test_squash_is_todays_resize_and_keeps_everything(tmp_path):
    tfm = T.build_transform("test", _cfg(tmp_path), SIZE)
    assert repr(tfm) == repr(A.Compose([A.Resize(SIZE, SIZE)]))  # the default is the pipeline before the keys
    out = _run(tmp_path)
    assert out.shape == (SIZE, SIZE, 3)
    assert _cells(out) == ([0, 1, 2, 3, 4, 5, 6, 7], "ttttbbbb")  # 40 -> 8: a column per stripe, aspect lost


def test_squash_with_crop_pct_crops_the_centre(tmp_path):
    # floor(8 / 0.5) = 16: 40 x 20 -> 16 x 16 (two columns per stripe, rows 0-7 top), then rows and columns 4-11
    assert _cells(_run(tmp_path, crop_pct=0.5)) == ([2, 2, 3, 3, 4, 4, 5, 5], "ttttbbbb")


def test_longest_keeps_the_aspect_and_pads_with_the_mean_colour(tmp_path):
    out = _run(tmp_path, resize="longest")  # 40 x 20 -> 8 x 4, centred on 8 x 8
    assert out.shape == (SIZE, SIZE, 3)
    assert (out[:2] == PAD).all() and (out[6:] == PAD).all()  # two pad rows above, two below
    assert _cells(out[2:6]) == ([0, 1, 2, 3, 4, 5, 6, 7], "ttbb")  # every stripe: nothing cut
    # crop_pct 0.5: 16 x 8 centred on 16 x 16 (rows 4-11 the image), the centre 8 x 8 is image only
    assert _cells(_run(tmp_path, resize="longest", crop_pct=0.5)) == ([2, 2, 3, 3, 4, 4, 5, 5], "ttttbbbb")


def test_shortest_keeps_the_aspect_and_crops_the_centre(tmp_path):
    # crop_pct 1: shorter side 20 -> 8, so 40 -> 16 (two columns per stripe); columns 4-11 kept
    out = _run(tmp_path, resize="shortest", crop_pct=1.0)
    assert out.shape == (SIZE, SIZE, 3)
    assert _cells(out) == ([2, 2, 3, 3, 4, 4, 5, 5], "ttttbbbb")
    # crop_pct 0.5: shorter side -> floor(8 / 0.5) = 16, so 32 x 16 (four columns per stripe); the centre 8 x 8 is
    # rows 4-11 (4 top, 4 bottom: a crop from the top would give 8 top rows) and columns 12-19
    assert _cells(_run(tmp_path, resize="shortest", crop_pct=0.5)) == ([3, 3, 3, 3, 4, 4, 4, 4], "ttttbbbb")


def test_interpolation_and_crop_pct_come_from_timms_config_and_keys_override(tmp_path):
    from timm.models import get_pretrained_cfg

    lite0 = get_pretrained_cfg("tf_efficientnet_lite0")
    assert (lite0.interpolation, lite0.crop_pct) == ("bicubic", 0.875)
    cfg = _cfg(tmp_path, backbone="tf_efficientnet_lite0", interpolation="auto", resize="shortest", mean=[])
    prep = T.preprocessing(cfg)
    assert (prep.interpolation, prep.flag, prep.crop_pct, prep.pad) == ("bicubic", cv2.INTER_CUBIC, 0.875,
                                                                        (128, 128, 128))
    resize, crop = T.build_transform("test", cfg, 96).transforms
    assert isinstance(resize, A.SmallestMaxSize) and resize.interpolation == cv2.INTER_CUBIC
    assert resize.max_size == 109 and (crop.height, crop.width) == (96, 96)  # floor(96 / 0.875), timm's rounding
    # the keys win over timm's config
    over = T.preprocessing({**cfg, "interpolation": "bilinear", "crop_pct": 0.5})
    assert (over.flag, over.crop_pct) == (cv2.INTER_LINEAR, 0.5)
    # auto crop_pct is timm's for shortest only: squash and longest keep the whole photo
    assert T.preprocessing({**cfg, "resize": "squash"}).crop_pct == T.preprocessing(
        {**cfg, "resize": "longest"}).crop_pct == 1.0
    # a backbone with no pretrained config in timm: bilinear and 1.0
    bare = T.preprocessing({**cfg, "backbone": "not_a_timm_model"})
    assert (bare.interpolation, bare.crop_pct) == ("bilinear", 1.0)


def test_train_val_and_multicrop_use_the_same_interpolation_and_resize(tmp_path):
    cfg = _cfg(tmp_path, backbone="tf_efficientnet_lite0", interpolation="auto", resize="longest", crop_scale_min=0.5)
    rrc = T.build_transform("train", cfg, 32).transforms[0]
    assert isinstance(rrc, A.RandomResizedCrop) and rrc.interpolation == cv2.INTER_CUBIC and rrc.scale == (0.5, 1.0)
    assert T.build_transform("train", _cfg(tmp_path), 32).transforms[0].interpolation == cv2.INTER_LINEAR
    steps = repr(A.Compose(T.preprocessing(cfg).steps(32)))
    # val: the hole on the photo first (never on the pad), then the same steps as test
    val = T.build_transform("val", cfg, 32)
    assert len(val.transforms) == 1 + len(T.preprocessing(cfg).steps(32))  # the hole, then the same steps
    assert repr(A.Compose(val.transforms[1:])) == steps
    assert repr(A.Compose(T.build_transform("test", cfg, 32).transforms)) == steps
    for kind in ("val", "test"):
        assert repr(T.MultiCrop(kind, 5, 32, cfg).finish) == steps
    views = T.MultiCrop("test", 5, SIZE, _cfg(tmp_path, resize="longest")).views(_image(), 0)
    assert views.shape == (5, 3, SIZE, SIZE)
    # each crop (24 x 12 of the 40 x 20) is resized as an image is: longer side 8, padded above and below
    assert (views[:, :, 0].transpose(0, 2, 1) == PAD).all() and (views[:, :, -1].transpose(0, 2, 1) == PAD).all()


def test_an_old_config_without_the_keys_reads_todays_pipeline(tmp_path):
    cfg = {k: v for k, v in _cfg(tmp_path).items() if k not in ("resize", "interpolation", "crop_pct")}
    for kind in ("val", "test"):
        assert repr(T.build_transform(kind, cfg, SIZE)) == repr(T.build_transform(kind, _cfg(tmp_path), SIZE))
    assert repr(T.MultiCrop("test", 5, SIZE, cfg)) == repr(T.MultiCrop("test", 5, SIZE))


def test_each_setting_has_its_own_cache_key(tmp_path):
    from pipeline.data.layouts import Item
    from pipeline.retrieval.embeddings import Variant, cache_key

    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), _image())
    items, meta = [Item("a", image, "h")], {"image_size": 32, "mean": MEAN, "std": [1, 1, 1]}
    settings = [{}, {"interpolation": "bicubic"}, {"resize": "longest"}, {"resize": "shortest", "crop_pct": 1.0},
                {"resize": "shortest"}, {"crop_pct": 0.875}]
    for variant in (Variant(), Variant(multicrop=5)):
        key = lambda **kw: cache_key("ck", items, variant.transform("test", _cfg(tmp_path, **kw), meta)[1], 32)  # noqa
        assert len({key(**kw) for kw in settings}) == len(settings), variant  # each its own (the stem is the split's)
        # what resolves to the same pipeline shares a key: lite0's auto is bicubic and, for shortest, 0.875
        assert key(resize="shortest", interpolation="auto") == key(resize="shortest", interpolation="bicubic",
                                                                    crop_pct=0.875)
    # the default's text is today's, so existing caches stay valid
    assert Variant().transform("test", _cfg(tmp_path), meta)[1] == repr(A.Compose([A.Resize(32, 32)]))


@pytest.mark.parametrize("key, value, message", [
    ("resize", "crop", "resize='crop': not one of squash, longest, shortest"),
    ("interpolation", "cubic", "interpolation='cubic': not one of auto, nearest, bilinear, bicubic, area, lanczos"),
    ("crop_pct", "half", "crop_pct='half': must be auto or a number in (0, 1]"),
    ("crop_pct", 0, "crop_pct=0: must be auto or a number in (0, 1]"),
    ("crop_pct", 1.5, "crop_pct=1.5: must be auto or a number in (0, 1]"),
    ("crop_pct", True, "crop_pct=True: must be auto or a number in (0, 1]"),
])
def test_a_bad_value_is_a_one_line_user_error(tmp_path, key, value, message):
    for kind in ("train", "val", "test"):
        with pytest.raises(UserError) as e:
            T.build_transform(kind, _cfg(tmp_path, **{key: value}), 32)
        assert str(e.value) == message
    with pytest.raises(UserError) as e:
        T.MultiCrop("test", 5, 32, _cfg(tmp_path, **{key: value}))
    assert str(e.value) == message


@pytest.mark.parametrize("value", ["0", "1.5", "-1"])
def test_a_crop_pct_outside_its_range_is_refused_where_the_config_is_read(value):
    with pytest.raises(UserError) as e:
        load_config("default", [f"crop_pct={value}"])
    assert "crop_pct=" in str(e.value) and "must be > 0 and <= 1" in str(e.value) and "\n" not in str(e.value)
    assert load_config("default", ["crop_pct=0.875"])["crop_pct"] == 0.875
    assert load_config("default", ["crop_pct=auto"])["crop_pct"] == "auto"
