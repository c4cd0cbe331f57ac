"""decode=gpu (pipeline/data/decode.py): the device-decoded uint8 batches against the CPU path's, the embeddings of a
tiny model either way, what falls back to the CPU path (said once) and the bad value. Without a GPU the device is
the CPU: the same code, torchvision decoding in the main process."""
import cv2
import numpy as np
import pytest
import torch

from pipeline.core.errors import UserError

# measured on the tiny dataset's photos and the enlarged ones (torch 2.14.1, torchvision 0.29.1, CPU): torchvision's
# and cv2's libjpeg-turbo decode alike here; the bilinear resize differs from cv2's fixed-point INTER_LINEAR by at
# most 1 level, about 0.1 on average. nvJPEG's IDCT adds a level or two: the bounds leave room for it
MAX_LEVELS, MEAN_LEVELS = 3, 0.5
SIZE = 64


@pytest.fixture(scope="module")
def photos(tiny_data, tmp_path_factory):
    """(items of the tiny dataset's train photos, plus 640-px enlargements of a few, and odd files by kind)."""
    from pipeline.data.layouts import Item, load_dataset

    ds = load_dataset(tiny_data / "data")
    items = ds.train[:40]
    out = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    big = []
    for k, it in enumerate(items[:6]):
        img = cv2.imread(str(it.path))
        img = cv2.resize(img, (640, 480 - 40 * k), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)  # detail for the downscale
        cv2.imwrite(str(out / f"big{k}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        big.append(Item(f"big{k}", out / f"big{k}.jpg", it.label))
    from PIL import Image

    src = Image.open(items[0].path)
    odd = {}
    src.save(out / "photo.png")
    odd["png"] = out / "photo.png"
    src.convert("L").save(out / "grey.jpg", quality=90)
    odd["grey"] = out / "grey.jpg"
    src.convert("CMYK").save(out / "cmyk.jpg", quality=90)
    odd["cmyk"] = out / "cmyk.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: cv2.imread applies it
    src.save(out / "rotated.jpg", quality=90, exif=exif)
    odd["rotated"] = out / "rotated.jpg"
    data = items[1].path.read_bytes()
    (out / "truncated.jpg").write_bytes(data[:len(data) * 2 // 3])
    odd["truncated"] = out / "truncated.jpg"
    odd = {k: Item(k, p, items[0].label) for k, p in odd.items()}
    return items, big, odd


def _cfg(**extra):
    from pipeline.config import load_config

    over = ["backbone=test_efficientnet", "pretrained=false", f"image_size={SIZE}", "embedding_dim=32",
            "eval_batch_size=16", "num_workers=0"]
    return load_config("default", over + [f"{k}={v}" for k, v in extra.items()])


def _test_tfm(cfg):
    from pipeline.data.transforms import build_transform

    return build_transform("test", cfg, SIZE)


def _cpu_batch(items, tfm, reader=None):
    from pipeline.data.dataset import ImageDataset

    ds = ImageDataset(items, tfm, reader=reader)
    return torch.stack([ds[i][0] for i in range(len(items))])


def _device_batch(items, tfm, reader=None, cfg=None):
    from pipeline.data import decode

    gpu = decode.plan(cfg or _cfg(decode="gpu"), tfm, reader, "cpu")
    ds = gpu.dataset(items)
    samples, _ = decode.collate([ds[i] for i in range(len(items))])
    return gpu.batch(samples)


def _diff(a, b):
    d = (a.int() - b.int()).abs().float()
    return d.max().item(), d.mean().item()


def test_device_decoded_batches_match_the_cpu_path(photos):
    items, big, _ = photos
    tfm = _test_tfm(_cfg())
    cpu, dev = _cpu_batch(items + big, tfm), _device_batch(items + big, tfm)
    assert dev.dtype == torch.uint8 and dev.shape == (len(items) + len(big), 3, SIZE, SIZE)
    most, mean = _diff(cpu, dev)
    assert most <= MAX_LEVELS and mean <= MEAN_LEVELS, (most, mean)  # measured: 1 and 0.105
    # the bounds would catch a swapped channel order or a wrong resize (nearest, or area instead of linear)
    assert _diff(cpu, dev.flip(1))[1] > 5 * MEAN_LEVELS  # measured 17.6
    x = torch.from_numpy(cv2.imread(str(big[0].path))[..., ::-1].copy()).permute(2, 0, 1)[None].float()
    for mode in ("nearest", "area"):
        other = torch.nn.functional.interpolate(x, (SIZE, SIZE), mode=mode).round().byte()
        assert _diff(cpu[len(items):len(items) + 1], other)[0] > MAX_LEVELS


def test_image_scale_reduces_on_the_device_close_to_the_cpu_readers_reduced_decode(photos):
    from pipeline.data.image_cache import ImageReader

    _, big, _ = photos
    reader = ImageReader(short_side=96)  # 480-px photos: libjpeg decodes at 1/4 (120 px), area-resized to 96
    tfm = _test_tfm(_cfg())
    most, mean = _diff(_cpu_batch(big, tfm, reader), _device_batch(big, tfm, reader))
    assert mean <= 2.0 and most <= 24, (most, mean)  # measured 0.87 and 8: DCT scaling is not an area average


def test_decode_gpu_embeddings_agree_with_decode_cpu(photos):
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.forward import embed_items

    items, big, _ = photos
    cfg = _cfg()
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    tfm = _test_tfm(cfg)
    a = embed_items(model, items + big, tfm, cfg, "cpu")[0].astype(np.float32)
    b = embed_items(model, items + big, tfm, {**cfg, "decode": "gpu", "num_workers": 1}, "cpu")[0].astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # measured 0.9999999 for this random model; a trained one is more sensitive to 1-level changes (the demo's
    # lite0 after an epoch: min 0.97, mean 0.995, as for 10% of its pixels moved by 1 level: bench/decode_speed.py)
    assert cos.min() > 0.99, cos.min()


def test_files_the_device_decoder_does_not_take_get_exactly_the_cpu_path(photos, capsys):
    from pipeline.data import decode

    _, _, odd = photos
    decode.NOTED.clear()
    tfm = _test_tfm(_cfg())
    kinds = ["png", "cmyk", "rotated", "truncated"]
    cpu = _cpu_batch([odd[k] for k in kinds], tfm)
    dev = _device_batch([odd[k] for k in kinds], tfm)
    assert torch.equal(cpu, dev)
    assert not decode.plain_jpeg(decode.read_bytes(odd["rotated"].path))  # the EXIF turn: cv2 applies it
    assert decode.plain_jpeg(decode.read_bytes(odd["grey"].path))  # grey JPEGs decode as RGB on the device
    most, _ = _diff(_cpu_batch([odd["grey"]], tfm), _device_batch([odd["grey"]], tfm))
    assert most <= MAX_LEVELS
    out = capsys.readouterr().out
    assert out.count("not plain 8-bit JPEGs") == 1, out
    assert "truncated.jpg: the device decoder failed (Image is incomplete or truncated); decoded on the CPU" in out


def test_what_decode_gpu_leaves_to_the_cpu_path_is_said_once(photos, tiny_data, capsys):
    from pipeline.data import decode
    from pipeline.data.image_cache import ImageReader
    from pipeline.data.transforms import MultiCrop, build_transform
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.forward import embed_items, embed_multicrop

    items, _, _ = photos
    cfg = _cfg(decode="gpu", data=str(tiny_data / "data"))
    assert decode.plan(_cfg(), _test_tfm(cfg), None, "cpu") is None  # decode=cpu
    decode.NOTED.clear()
    val = build_transform("val", cfg, SIZE)
    assert decode.plan(cfg, val, None, "cpu") is None
    assert decode.plan(cfg, build_transform("test", cfg, SIZE, "blendflip"), None, "cpu") is None
    assert decode.plan(cfg, MultiCrop("test", 5, SIZE), None, "cpu") is None
    for keys in ({"resize": "longest"}, {"resize": "shortest"}, {"interpolation": "bicubic"}, {"crop_pct": 0.875}):
        other = _test_tfm(_cfg(decode="gpu", **keys))  # the preprocessing keys' other choices: the CPU's pixels
        assert decode.plan(cfg, other, None, "cpu") is None and decode.describe(cfg, other) == "", keys
    cached = ImageReader(96, tiny_data / "no-cache", "memmap", splits=())  # a reader of an image cache's folder
    assert decode.plan(cfg, _test_tfm(cfg), cached, "cpu") is None
    assert decode.describe(cfg, _test_tfm(cfg)) == "|decode gpu" and decode.describe(cfg, val) == ""
    out = capsys.readouterr().out
    assert out.count("other than the plain test resize") == 1 and out.count("applies only to reading source") == 1
    # validation's queries (the val pipeline) keep the CPU path: the same rows as decode=cpu
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    some = items[:8]
    np.testing.assert_array_equal(embed_items(model, some, val, cfg, "cpu")[0],
                                  embed_items(model, some, val, {**cfg, "decode": "cpu"}, "cpu")[0])
    mc = MultiCrop("test", 5, SIZE)
    np.testing.assert_array_equal(embed_multicrop(model, some, mc, cfg, "cpu"),
                                  embed_multicrop(model, some, mc, {**cfg, "decode": "cpu"}, "cpu"))
    assert capsys.readouterr().out == ""  # said before, not again


def test_a_bad_decode_value_is_one_line(photos):
    from pipeline.model.embedder import build_model
    from pipeline.retrieval.forward import embed_items

    items, _, _ = photos
    cfg = _cfg(decode="nvjpeg")
    model, _ = build_model(cfg, with_weights=False)
    with pytest.raises(UserError, match=r"^decode='nvjpeg': use cpu or gpu$"):
        embed_items(model, items[:2], _test_tfm(cfg), cfg, "cpu")
