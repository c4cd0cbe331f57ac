"""The image cache (data/image_cache.py), reduced decoding (data/images.py) and the uint8 data path (the model
normalises on its device)."""
import os

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.data import image_cache
from pipeline.data.image_cache import CacheSpec, ImageReader, build_cache
from pipeline.data.images import read_image
from pipeline.data.layouts import Item

from conftest import TINY, assert_one_line_error, cli, tiny_overrides


def _photo(path, h=768, w=1024, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 3)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    return [Item(f"p{i}", _photo(d / f"p{i}.jpg", 300 + 40 * i, 400, seed=i), "h") for i in range(7)]


def test_reduced_decoding_is_the_smallest_jpeg_scale_then_an_area_resize(tmp_path):
    path = _photo(tmp_path / "big.jpg")
    # shorter side 768: 768 // 8 = 96 < 150 <= 768 // 4, so libjpeg decodes at 1/4 (192 x 256), then area-resized
    want = cv2.resize(cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4), (200, 150), interpolation=cv2.INTER_AREA)
    assert np.array_equal(read_image(path, 150), want[..., ::-1])
    assert read_image(path, 96).shape == (96, 128, 3)  # exactly 1/8: no resize after the decode
    assert read_image(path, 1000).shape == (768, 1024, 3)  # never enlarged
    assert np.array_equal(read_image(path, 0), cv2.imread(str(path))[..., ::-1])


def test_memmap_cache_holds_exactly_what_a_reduced_read_gives_and_jpeg_close_to_it(photos, tmp_path):
    for fmt in image_cache.FORMATS:
        spec = CacheSpec(120, fmt)
        assert build_cache({"train": photos[:5], "test": photos[5:]}, spec, tmp_path, n_jobs=2, log=print) == {
            "train": 5, "test": 2}
        reader = ImageReader(120, spec.folder(tmp_path), fmt)
        for it in photos:
            want, got = read_image(it.path, 120), reader(it)
            assert got.shape == want.shape and min(got.shape[:2]) == 120
            if fmt == "memmap":
                assert np.array_equal(got, want)
            else:
                assert np.abs(got.astype(int) - want).mean() < 4.0  # quality 95, 4:2:0 chroma on colour noise
        assert build_cache({"train": photos[:5]}, spec, tmp_path, log=print) == {"train": 0}  # nothing stale


def _mtime_bump(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_each_key_part_invalidates_an_entry(tmp_path):
    spec = CacheSpec(100)
    items = [Item(f"p{i}", _photo(tmp_path / f"p{i}.jpg", 300, 400, seed=i), "h") for i in range(4)]
    build_cache({"train": items}, spec, tmp_path, log=print)
    reader = ImageReader(100, spec.folder(tmp_path))
    _photo(items[0].path, 300, 400, seed=50)  # new content, same path (and size: the same JPEG shape)
    _mtime_bump(items[0].path)
    os.truncate(items[1].path, os.path.getsize(items[1].path) - 7)  # new size (a truncated JPEG still decodes)
    os.utime(items[1].path, ns=(os.stat(items[1].path).st_atime_ns, reader.entries[str(items[1].path)][2]))
    assert np.array_equal(reader(items[0]), read_image(items[0].path, 100))  # stale entry: the source is read
    assert np.array_equal(reader(items[1]), read_image(items[1].path, 100))
    moved = Item("moved", items[2].path.rename(items[2].path.with_name("moved.jpg")), "h")
    assert build_cache({"train": [items[0], items[1], moved, items[3]]}, spec, tmp_path, log=print) == {"train": 3}
    # the cache's own parameters name its folder: another size or format is another cache
    assert len({CacheSpec(100).folder(tmp_path), CacheSpec(101).folder(tmp_path),
                CacheSpec(100, "jpeg").folder(tmp_path)}) == 3


def test_a_build_cut_short_keeps_its_finished_chunks_and_resumes(photos, tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "_CHUNK", 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    items = photos[:4] + [Item("bad", bad, "h")] + photos[4:]
    spec = CacheSpec(80)
    with pytest.raises(UserError, match="bad.jpg"):
        build_cache({"train": items}, spec, tmp_path, n_jobs=1, log=print)
    store = spec.folder(tmp_path)
    assert len(ImageReader(80, store).entries) == 4  # the two chunks before the bad image
    with open(store / "train.u8", "ab") as f:
        f.write(b"\x01" * 999)  # a chunk a kill cut short: beyond what the index lists
    _photo(bad, 200, 300, seed=9)
    assert build_cache({"train": items}, spec, tmp_path, n_jobs=1, log=print) == {"train": 4}
    reader = ImageReader(80, store)
    assert all(np.array_equal(reader(it), read_image(it.path, 80)) for it in items)
    assert (store / "train.u8").stat().st_size == sum(h * w * 3 for *_, h, w in reader.entries.values())
    assert not list(store.glob("*.tmp"))


def test_uint8_batches_normalised_on_the_device_equal_the_cpu_normalised_path():
    from pipeline.model.backbone import input_config
    from pipeline.model.embedder import build_model

    cfg = load_config("default", TINY)
    model, _ = build_model(cfg)
    model.eval()
    _, mean, std = input_config(cfg, model.backbone)
    img = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    img[0, 0, :4] = [[0, 0, 0], [255, 255, 255], [1, 128, 254], [255, 0, 0]]  # the extremes and the red fill
    on_cpu = np.stack([A.Normalize(mean=mean, std=std)(image=i)["image"] for i in img])
    x = torch.from_numpy(img.transpose(0, 3, 1, 2))
    for fmt in (torch.contiguous_format, torch.channels_last):
        normalised = model.pixel_norm(x.contiguous(memory_format=fmt))
        assert torch.equal(normalised, torch.from_numpy(on_cpu.transpose(0, 3, 1, 2)))  # bit for bit
        assert normalised.is_contiguous(memory_format=fmt)
    with torch.no_grad():
        want = model(torch.from_numpy(on_cpu.transpose(0, 3, 1, 2)).contiguous())
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not [k for k in model.state_dict() if k.startswith("pixel_norm")]  # checkpoints are unchanged


def test_train_with_the_cache_builds_it_and_a_bad_setting_is_one_line(tiny_data, tmp_path):
    over = tiny_overrides(tiny_data, tmp_path / "runs", "epochs=1", "image_cache=true", "image_scale=1.5",
                          f"image_cache_dir={tmp_path / 'cache'}")
    p = cli("train", "default", *over)
    assert p.returncode == 0, p.stderr
    assert "image cache memmap-short48-v1/train" in p.stdout, p.stdout
    assert (tmp_path / "cache" / "memmap-short48-v1" / "train.u8").is_file()
    assert_one_line_error(cli("train", "default", *over, "image_scale=0"), "image_cache=true needs image_scale")
    assert_one_line_error(cli("cache-images", "--data", tiny_data / "data", "--size", "0"), "--size")
