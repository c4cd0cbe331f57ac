"""The bad-input catalogue (docs/kaggle.md, "Bad input"): one test per row. Each input is either handled as a
competitor would want (stated in CATALOGUE) or stopped with a one-line error naming the file / row / key and the fix,
a non-zero exit and nothing written half-way. test_docs_table_matches keeps docs/kaggle.md and this file in step."""
import re
import shutil

import numpy as np
import pytest

from conftest import PYPATH, ROOT, assert_one_line_error, cli, tiny_overrides

# id -> how it is handled (the rows of docs/kaggle.md's table, in this order)
CATALOGUE = {
    "corrupt_jpeg": "error naming the image, 'remove or replace it'; embeddings cache untouched",
    "zero_byte_image": "error naming the image",
    "truncated_png": "error naming the image",
    "truncated_jpeg": "used as far as it decodes, with a one-line warning naming it",
    "grayscale_image": "read as 3-channel RGB",
    "rgba_image": "alpha dropped, RGB",
    "cmyk_jpeg": "converted to RGB",
    "16bit_png": "scaled to 8-bit RGB",
    "huge_image": "decoded, then resized by the transforms like any other",
    "exif_rotated_image": "EXIF orientation applied",
    "non_image_file_in_image_folder": "ignored (only image extensions are listed)",
    "empty_class_folder": "ignored: not a class",
    "class_with_one_image": "fold -1: always in training, never a validation query",
    "missing_data_folder": "error naming the folder and ./run.sh make-data",
    "missing_train_images_folder": "error naming the expected layout",
    "csv_missing_column": "error naming the file and the missing column",
    "csv_extra_column": "ignored",
    "csv_renamed_column": "error listing the columns the file has",
    "csv_path_escapes_folder": "error naming the row: the path leaves the data folder",
    "csv_test_path_escapes_folder": "error naming the test.csv row",
    "duplicate_image_ids": "error naming the id",
    "sample_submission_id_without_image": "error naming the id",
    "folds_file_of_other_data": "error naming the folds file and the ./run.sh folds command",
    "config_typo": "error naming the unknown key",
    "config_wrong_type": "error naming the key and the expected type",
    "unknown_backbone": "error naming it; no run folder written",
    "unknown_head": "error listing the known heads",
    "unknown_sampler": "error listing the known samplers",
    "checkpoint_from_other_config": "error naming the checkpoint and the differing key",
    "embeddings_from_other_checkpoint": "recomputed (the cache key holds the checkpoint's sha256)",
    "submission_with_wrong_ids": "error naming the row and the id",
    "damaged_embeddings_cache": "error naming the file and what is wrong: delete it and re-embed",
    "image_cache_index_damaged": "error naming the index: delete it and run ./run.sh cache-images again",
    "epochs_not_positive": "error naming the key and its range; no run folder",
    "checkpoint_without_config": "error naming the checkpoint and its missing entries: delete it and retrain",
    "config_value_out_of_range": "error naming the key, the value and its range (config.RANGES: every numeric key)",
    "fold_not_in_folds_file": "error listing the file's folds (fold=-1 trains on every image, no validation)",
    "run_name_escapes_folder": "error stating the run-name rule; nothing written",
    "train_failing_before_first_checkpoint": "error saying no checkpoint was written; the run folder removed",
    "corrupt_download_archive": "error naming the member; archive and partial files deleted, the next run refetches",
    "encrypted_archive_member": "error naming the archive and the member; nothing of it kept",
    "unsupported_compression": "error naming the member and the method; nothing of it kept",
    "oversize_archive_member": "error naming its size and the option, before anything is downloaded",
    "archive_member_not_listed": "error naming the member; the archive deleted",
    "listing_beyond_first_page": "every page is read; error naming the file",
    "kernel_name_escapes_folder": "error stating the kernel-name rule; nothing read outside kernels/, nothing sent",
    "kernel_output_name_escapes_folder": "error naming it; nothing fetched, nothing written outside kernels/<name>/",
    "kaggle_json_is_a_list": "error naming the file and how to make a new token",
    "kaggle_json_malformed": "error naming the file and how to make a new token; not 'no credentials'",
    "kernel_check_env_without_credentials": "the kernel runs without any KAGGLE_* variable",
    "verified_json_damaged": "error naming it: rebuild with ./run.sh kernel, or upload with --unverified",
    "package_replace_killed": "the next command puts the old package back; rebuilds swap in one step where the OS can",
    "image_header_too_large": "a JPEG with image_scale > 0: decoded at 1/8 scale; else error naming it and its size",
    "fold_cell_not_integer": "error naming the file, the row, the id and ./run.sh folds",
    "folds_file_duplicate_image": "error naming the file, both rows, the id and ./run.sh folds",
    "submission_not_utf8": "error naming the file and the row: save it as UTF-8 (no encoding is guessed)",
    "extra_label_map_collision": "error naming the map, the row and both classes (several outside classes may "
                                 "share one competition class)",
    "extra_label_map_bad": "error naming the map, the extra_data entry and the missing columns, or the row and its "
                           "unknown competition class",
    "extra_data_not_a_layout": "error naming the entry and the known layouts; no run folder",
}


@pytest.fixture
def data(tiny_data, tmp_path):
    """A private copy of the tiny dataset (hotelid layout) and its folds file."""
    shutil.copytree(tiny_data / "data", tmp_path / "data")
    shutil.copy(tiny_data / "folds.csv", tmp_path / "folds.csv")
    return tmp_path / "data"


@pytest.fixture
def runs(trained, tmp_path):
    """A private copy of the two trained tiny runs, so a test may break their files."""
    _, src = trained
    shutil.copytree(src, tmp_path / "runs")
    return tmp_path / "runs"


def _image(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    return path


def _read(path):
    from pipeline.data.images import read_image

    return read_image(path)


def _error(fn, *needles):
    from pipeline.core.errors import UserError

    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    return msg


def _first_train_image(data):
    return sorted((data / "train_images").rglob("*.jpg"))[0]


def test_corrupt_jpeg(data, runs):
    bad = _first_train_image(data)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    emb = runs / "a" / "fold0" / "embeddings"

    def snapshot():  # the finished files; <stem>.parts/ is resume state (chunks done before the bad image)
        files = emb.rglob("*") if emb.exists() else []
        return {p: p.read_bytes() for p in files if p.is_file() and ".parts" not in p.parent.name}

    before = snapshot()
    p = cli("embed", runs / "a.yaml", "--data", data, *tiny_overrides(data.parent, runs, "epochs=1"))
    assert_one_line_error(p, str(bad), "remove or replace it")
    assert snapshot() == before


def test_zero_byte_image(tmp_path):
    path = _image(tmp_path, "empty.jpg", lambda p: p.write_bytes(b""))
    _error(lambda: _read(path), str(path), "not a readable image")


def test_truncated_png(tmp_path):
    from PIL import Image

    full = _image(tmp_path, "full.png", lambda p: Image.fromarray(np.full((64, 48, 3), 90, np.uint8)).save(p))
    cut = _image(tmp_path, "cut.png", lambda p: p.write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2]))
    _error(lambda: _read(cut), str(cut))


def test_truncated_jpeg(data, capsys):
    img = _first_train_image(data)
    full = _read(img)
    img.write_bytes(img.read_bytes()[:len(img.read_bytes()) * 6 // 10])
    out = _read(img)
    assert out.shape == full.shape
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: {img}:") and len(err.splitlines()) == 1, err


def _rgb_of(tmp_path, name, save):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    path = _image(tmp_path, name, lambda p: save(img, p))
    out = _read(path)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    return img, out


def _blocks(grid, side=16):
    """An image of flat side x side blocks, grid[i][j] the colour of block (i, j): JPEG's 8x8 (and 16x16 chroma)
    blocks never straddle two colours, so a lossy decode keeps each block's colour within a level or two."""
    return np.concatenate([np.concatenate([np.full((side, side, len(c)), c, np.uint8) for c in row], 1)
                           for row in grid], 0)


def _block_means(img, rows, cols):
    """The mean colour of each of rows x cols equal blocks of img, as an int array (rows, cols, channels)."""
    h, w = img.shape[0] // rows, img.shape[1] // cols
    return np.array([[img[i * h:(i + 1) * h, j * w:(j + 1) * w].reshape(-1, img.shape[2]).mean(0)
                      for j in range(cols)] for i in range(rows)]).round().astype(int)


def test_grayscale_image(tmp_path):
    img, out = _rgb_of(tmp_path, "g.png", lambda im, p: im.convert("L").save(p))
    grey = np.asarray(img.convert("L"))  # the stored levels (PNG is lossless): each copied to R, G and B
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], grey)


def test_rgba_image(tmp_path):
    """Alpha dropped (docs/kaggle.md): every pixel is its stored R, G, B whatever its alpha, transparent ones
    included; not composited onto black (which would give R*A/255) or white."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(1, 255, (40, 30, 3), dtype=np.uint8)
    alpha = np.tile(np.array([0, 1, 128, 254, 255], np.uint8), 40 * 30 // 5).reshape(40, 30)
    path = _image(tmp_path, "a.png", lambda p: Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p))
    with Image.open(path) as im:
        assert im.mode == "RGBA"
    out = _read(path)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[alpha == 0], rgb[alpha == 0])  # fully transparent: the colour all the same
    np.testing.assert_array_equal(out, rgb)


# CMYK ink -> the RGB it prints as: (255 - C)(255 - K)/255 per channel (PIL's CMYK -> RGB conversion, by hand)
CMYK_TO_RGB = [((0, 255, 255, 0), (255, 0, 0)),  # magenta + yellow: red
               ((255, 0, 0, 0), (0, 255, 255)),  # cyan
               ((0, 0, 0, 0), (255, 255, 255)),  # no ink: white
               ((0, 0, 0, 128), (127, 127, 127)),  # half black
               ((64, 128, 192, 64), (143, 95, 47)),
               ((255, 255, 255, 255), (0, 0, 0))]


def test_cmyk_jpeg(tmp_path):
    """Converted to RGB: each ink patch reads as the colour it prints as (K darkens all three), not its C, M, Y
    numbers taken as R, G, B. Within 3 levels: JPEG's rounding, and OpenCV's conversion divides by 256."""
    from PIL import Image

    for cmyk, rgb in CMYK_TO_RGB:  # the hand values are PIL's own
        assert Image.new("CMYK", (1, 1), cmyk).convert("RGB").getpixel((0, 0)) == rgb, cmyk
    grid = [[c for c, _ in CMYK_TO_RGB[:3]], [c for c, _ in CMYK_TO_RGB[3:]]]
    path = _image(tmp_path, "c.jpg", lambda p: Image.fromarray(_blocks(grid), "CMYK").save(p, quality=95))
    with Image.open(path) as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    out = _read(path)
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    want = np.array([[r for _, r in CMYK_TO_RGB[:3]], [r for _, r in CMYK_TO_RGB[3:]]])
    got = out.reshape(2, 16, 3, 16, 3).transpose(0, 2, 1, 3, 4).reshape(2, 3, 256, 3).astype(int)
    err = np.abs(got - want[:, :, None]).max((2, 3))
    assert (err <= 3).all(), (err, _block_means(out, 2, 3).tolist())


def test_16bit_png(tmp_path):
    """Scaled to 8-bit: a 16-bit level v reads as its high byte v >> 8 (0x8000 -> 128), not wrapped to its low byte
    (0x8000 & 0xFF = 0). The levels are ones where v >> 8 and round(v * 255 / 65535) agree; the colour image shows
    R, G and B kept apart and in order."""
    import cv2

    levels = np.array([[0x8000, 0x4000], [0x0080, 0xFFFF]], np.uint16)  # -> 128, 64, 0, 255
    grey = np.kron(levels, np.ones((20, 15), np.uint16))
    path = _image(tmp_path, "d.png", lambda p: cv2.imwrite(str(p), grey))
    out = _read(path)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8
    want = np.kron(np.array([[128, 64], [0, 255]], np.uint8), np.ones((20, 15), np.uint8))
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], want)

    rgb16 = np.empty((8, 6, 3), np.uint16)
    rgb16[:] = (0x8000, 0x2000, 0xFFFF)  # R, G, B -> 128, 32, 255
    path = _image(tmp_path, "d3.png", lambda p: cv2.imwrite(str(p), rgb16[..., ::-1].copy()))  # cv2: B, G, R
    out = _read(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(np.array([128, 32, 255], np.uint8), (8, 6, 3)))


def test_huge_image(tmp_path):
    import cv2

    from pipeline.config import load_config
    from pipeline.data.transforms import apply, build_transform

    path = _image(tmp_path, "h.png", lambda p: cv2.imwrite(str(p), np.zeros((6000, 8000), np.uint8)))
    img = _read(path)
    assert img.shape == (6000, 8000, 3)
    cfg = load_config("default", ["image_size=64"])
    x = apply(build_transform("test", cfg, 64), img, seed=0)
    assert tuple(x.shape[-2:]) == (64, 64)


# EXIF orientation 6: the stored image is shown turned 90 degrees clockwise. Stored quadrants (top-left,
# top-right / bottom-left, bottom-right) red, green / blue, white; turned clockwise the stored bottom-left comes to
# the top-left: blue, red / white, green. Counter-clockwise would give green, white / red, blue.
EXIF_STORED = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)]]
EXIF_SHOWN = [[(0, 0, 255), (255, 0, 0)], [(255, 255, 255), (0, 255, 0)]]


@pytest.mark.parametrize("short_side", [0, 32])  # 32: the JPEG decoded at 1/2 scale (read_image's reduced path)
def test_exif_rotated_image(tmp_path, short_side):
    """EXIF orientation applied: a 128 x 64 (H x W) JPEG of four flat quadrants tagged 6 reads as 64 x 128, its
    quadrants where a clockwise quarter turn puts them (each within a few levels: JPEG)."""
    from PIL import Image

    from pipeline.data.images import read_image

    stored = np.kron(np.array(EXIF_STORED, np.uint8), np.ones((64, 32, 1), np.uint8))
    assert stored.shape == (128, 64, 3)

    def save(p):
        im = Image.fromarray(stored)
        exif = im.getexif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        im.save(p, exif=exif, quality=95, subsampling=0)

    out = read_image(_image(tmp_path, "e.jpg", save), short_side)
    f = 2 if short_side else 1
    assert out.shape == (64 // f, 128 // f, 3) and out.dtype == np.uint8
    shown = _block_means(out, 2, 2)
    assert np.abs(shown - np.array(EXIF_SHOWN)).max() <= 3, shown.tolist()
    turned = np.rot90(stored, k=-1)[::f, ::f].astype(int)  # numpy's clockwise turn: the same layout, pixel for pixel
    assert np.abs(_block_means(turned, 2, 2) - np.array(EXIF_SHOWN)).max() == 0


def _load(data, cfg=None):
    from pipeline.data.layouts import load_dataset

    return load_dataset(data, cfg)


def test_non_image_file_in_image_folder(data):
    n = len(_load(data).train)
    cls = _first_train_image(data).parent
    (cls / "notes.txt").write_text("hello")
    (cls / ".DS_Store").write_bytes(b"\0\1")
    assert len(_load(data).train) == n


def test_empty_class_folder(data):
    classes = _load(data).classes
    (data / "train_images" / "999999").mkdir()
    assert _load(data).classes == classes


def test_class_with_one_image(data, tmp_path):
    from pipeline.data.folds import write_folds

    one = data / "train_images" / "777777"
    one.mkdir()
    shutil.copy(_first_train_image(data), one / "only.jpg")
    rows = write_folds(_load(data), tmp_path / "f.csv", n_folds=5, seed=1)
    assert [f for i, _, f in rows if i == "777777/only.jpg"] == [-1]


def test_missing_data_folder(tmp_path):
    p = cli("folds", "--data", tmp_path / "nope", "--out", tmp_path / "f.csv")
    assert_one_line_error(p, str(tmp_path / "nope"), "make-data")
    assert not (tmp_path / "f.csv").exists()


def test_missing_train_images_folder(data):
    shutil.rmtree(data / "train_images")
    p = cli("folds", "--data", data, "--out", data.parent / "f.csv")
    assert_one_line_error(p, "no train_images/ folder", "train_images/<hotel_id>/<image>.jpg")


def _csv_data(data, header, rows):
    """A csv-layout folder beside `data`, pointing at its images."""
    root = data.parent / "csvdata"
    shutil.copytree(data / "train_images", root / "train_images")
    lines = [",".join(header)] + [",".join(r) for r in rows]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def _image_rows(data, n=4):
    imgs = sorted((data / "train_images").rglob("*.jpg"))[:n]
    return [(f"train_images/{p.parent.name}/{p.name}", p.parent.name) for p in imgs]


def test_csv_missing_column(data):
    root = _csv_data(data, ["image"], [(r[0],) for r in _image_rows(data)])
    p = cli("folds", "--data", root, "--out", root / "f.csv")
    assert_one_line_error(p, "train.csv", "missing column(s) label")


def test_csv_extra_column(data):
    root = _csv_data(data, ["image", "label", "photographer"], [r + ("x",) for r in _image_rows(data)])
    assert len(_load(root).train) == 4


def test_csv_renamed_column(data):
    root = _csv_data(data, ["image", "hotel"], _image_rows(data))
    p = cli("folds", "--data", root, "--out", root / "f.csv")
    assert_one_line_error(p, "missing column(s) label", "has: image, hotel")


def test_csv_path_escapes_folder(data):
    rows = _image_rows(data)
    rows[2] = ("../../etc/passwd", "1")
    root = _csv_data(data, ["image", "label"], rows)
    p = cli("folds", "--data", root, "--out", root / "f.csv")
    assert_one_line_error(p, "train.csv row 4", "leaves the data folder")


def test_csv_test_path_escapes_folder(data):
    root = _csv_data(data, ["image", "label"], _image_rows(data))
    (root / "test.csv").write_text("image\n" + _image_rows(data)[0][0] + "\n/etc/hostname\n")
    p = cli("folds", "--data", root, "--out", root / "f.csv")
    assert_one_line_error(p, "test.csv row 3", "leaves the data folder")


def test_duplicate_image_ids(data):
    rows = _image_rows(data)
    root = _csv_data(data, ["image", "label"], rows + [rows[1]])
    p = cli("folds", "--data", root, "--out", root / "f.csv")
    assert_one_line_error(p, "duplicate image id", rows[1][0])


def test_sample_submission_id_without_image(data):
    with open(data / "sample_submission.csv", "a") as f:
        f.write("ghost.jpg,1 2 3 4 5\n")
    p = cli("folds", "--data", data, "--out", data.parent / "f.csv")
    assert_one_line_error(p, "sample_submission.csv", "'ghost.jpg' has no test image")


def test_folds_file_of_other_data(data, runs):
    victim = _first_train_image(data)
    victim.rename(victim.with_name("renamed.jpg"))
    p = cli("train", runs / "a.yaml", *tiny_overrides(data.parent, runs, "epochs=1"))
    assert_one_line_error(p, "folds.csv does not match", "./run.sh folds --data")


def test_config_typo(data, runs):
    p = cli("train", runs / "a.yaml", *tiny_overrides(data.parent, runs, "epochz=2"))
    assert_one_line_error(p, "unknown config key 'epochz'")


def test_config_wrong_type(data, runs):
    p = cli("train", runs / "a.yaml", *tiny_overrides(data.parent, runs, "epochs=two"))
    assert_one_line_error(p, "epochs")


def test_unknown_backbone(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    runs = tmp_path / "newruns"
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, runs, "backbone=no_such_net"))
    assert_one_line_error(p, "unknown backbone 'no_such_net'")
    assert not runs.exists(), sorted(str(q.relative_to(runs)) for q in runs.rglob("*"))  # no run folder, no runs_dir


def test_unknown_head(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns", "head=magic"))
    assert_one_line_error(p, "unknown head 'magic'", "arcface")


def test_unknown_sampler(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns", "sampler=magic"))
    assert_one_line_error(p, "sampler='magic' is unknown", "m_per_class")


def test_checkpoint_from_other_config(data, runs):
    p = cli("embed", runs / "a.yaml", *tiny_overrides(data.parent, runs, "epochs=1", "embedding_dim=48"))
    assert_one_line_error(p, "best.pt was made with embedding_dim=32", "48")


def test_embeddings_from_other_checkpoint(data, runs):
    import torch

    from pipeline.config import load_config
    from pipeline.retrieval.embeddings import ensure_embeddings

    cfg = load_config(str(runs / "a.yaml"), tiny_overrides(data.parent, runs, "epochs=1"))
    ensure_embeddings(cfg, log=lambda *a: None)
    assert ensure_embeddings(cfg, log=lambda *a: None).computed == []  # cached
    ck_path = runs / "a" / "fold0" / "best.pt"
    ck = torch.load(ck_path, weights_only=True)
    key = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][key] = ck["model"][key] + 0.01
    torch.save(ck, ck_path)
    assert ensure_embeddings(cfg, log=lambda *a: None).computed == ["gallery", "val", "test"]


def test_submission_with_wrong_ids(data, tmp_path):
    rows = (data / "sample_submission.csv").read_text().splitlines()
    rows[2] = "not_a_test_image.jpg," + rows[2].split(",", 1)[1]
    sub = tmp_path / "sub.csv"
    sub.write_text("\n".join(rows) + "\n")
    p = cli("validate", sub, "--data", data)
    assert_one_line_error(p, "row 3", "'not_a_test_image.jpg'")


def _claiming(path, width, height):
    """path (a small JPEG or PNG) with its header rewritten to claim width x height px: the file stays a few KB."""
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    if data[:4] == b"\x89PNG":  # IHDR: the first chunk, its CRC over type and data
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:
        i = 2
        while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # the segments before the frame header, skipped by length
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        data[i + 5:i + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def test_image_header_too_large(data, tmp_path):
    import cv2

    # 3.6 Gpx: past OpenCV's limit (2^30 px) in full, within it at 1/8 scale; the file's data is that of a small
    # JPEG, so the decode ends early: used as far as it decodes, as a truncated JPEG is
    big = _claiming(_first_train_image(data), 60000, 60000)
    p = cli("cache-images", "default", "--data", data, "--size", "32", f"image_cache_dir={tmp_path / 'cache'}")
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().startswith(f"warning: {big}:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    needles = (str(big), "60000 x 60000 px", "remove or replace it")
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns"))
    assert_one_line_error(p, *needles, "set image_scale > 0")  # image_scale=0: read at full size
    png = _claiming(_image(tmp_path, "big.png", lambda p: cv2.imwrite(str(p), np.zeros((8, 8, 3), np.uint8))),
                    60000, 60000)
    _error(lambda: _read(png), str(png), *needles[1:])  # no reduced decode for a PNG


def _set_cell(path, row, column, value):
    """The CSV at path with one cell replaced (row: 2 is the first under the header, as errors count them)."""
    lines = path.read_text().splitlines()
    cells = lines[row - 1].split(",")
    cells[column] = value
    lines[row - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_fold_cell_not_integer(data, tmp_path):
    folds = data.parent / "folds.csv"
    good = folds.read_text()
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    for cell, how in (("x", []), ("", ["--folds", "all"]), ("0.0", [])):
        folds.write_text(good)
        _set_cell(folds, 4, 2, cell)
        image_id = folds.read_text().splitlines()[3].split(",")[0]
        p = cli("train", tmp_path / "fresh.yaml", *how, *tiny_overrides(data.parent, tmp_path / "newruns"))
        assert_one_line_error(p, f"{folds} row 4", f"'{image_id}'", f"fold '{cell}'", "./run.sh folds --data")


def test_folds_file_duplicate_image(data, tmp_path):
    folds = data.parent / "folds.csv"
    first = folds.read_text().splitlines()[1]
    image_id, label, fold = first.split(",")
    with open(folds, "a") as f:
        f.write(f"{image_id},{label},{(int(fold) + 3) % 5}\n")
    n = len(folds.read_text().splitlines())
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    for how in ([], ["--folds", "all"]):
        p = cli("train", tmp_path / "fresh.yaml", *how, *tiny_overrides(data.parent, tmp_path / "newruns"))
        assert_one_line_error(p, f"{folds} row {n}", f"'{image_id}'", "twice", "./run.sh folds --data")


def test_submission_not_utf8(data, tmp_path):
    lines = (data / "sample_submission.csv").read_text().splitlines()
    lines[2] = "café_" + lines[2]  # as a spreadsheet saves it in latin-1: 'é' is the one byte 0xe9
    sub = tmp_path / "sub.csv"
    sub.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    needles = (str(sub), "row 3", "save it as UTF-8")
    assert_one_line_error(cli("validate", sub, "--data", data), *needles)
    assert_one_line_error(cli("score", sub, "--truth", data / "test_truth.csv"), *needles)
    truth = tmp_path / "truth.csv"  # every CSV is read through the same decoding (core/io.read_text)
    truth.write_bytes((data / "test_truth.csv").read_bytes().replace(b".jpg,", b".jpg,\xe9", 1))
    assert_one_line_error(cli("score", data / "sample_submission.csv", "--truth", truth), str(truth), "row 2",
                          "save it as UTF-8")


# ---- Kaggle: downloaded archives, kernel names and outputs, credentials, the kernel package's own files

COMPETITION = "tiny-competition"


def _competition_files():
    """A small competition's files, {path: bytes}; the last one (train.csv) is the member zip_of breaks."""
    images = {f"train_images/{i}/{i}.jpg": bytes(range(256)) * (i + 1) for i in range(5)}
    rows = "".join(f"{i}/{i}.jpg,{i}\n" for i in range(5))
    return {**images, "train.csv": ("image,label\n" + rows).encode()}


def _download(tmp_path, *args, files=None, archive=None, page=None, out="data/c", kaggle_json=None):
    """./run.sh download of COMPETITION (files: its listing, default _competition_files()) from the stand-in serving
    `archive` (default: the zip of the files) and at most `page` files per list call: (process, project, stand-in)."""
    from test_upload import kaggle_env

    from kaggle_standin import StandIn

    work = tmp_path / "project"
    work.mkdir(exist_ok=True)
    with StandIn() as s:
        s.competitions[COMPETITION] = files or _competition_files()
        if archive is not None:
            s.archives[COMPETITION] = archive
        s.max_page_size = page
        env = kaggle_env(tmp_path, s)
        if kaggle_json is not None:
            (tmp_path / "kcfg" / "kaggle.json").write_text(kaggle_json)
        p = cli("download", "--competition", COMPETITION, "--out", out, *args, cwd=work, env=env)
    return p, work, s


def _error_after_progress(p, *needles):
    """assert_one_line_error for a download that failed after the client's progress bars (on stderr too)."""
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stdout + p.stderr
    error = p.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and all(n in error for n in needles), error


def _refused_archive(tmp_path, archive, *needles):
    """The download of `archive` is one line naming it, and leaves nothing: no archive, no file unpacked from it."""
    p, work, _ = _download(tmp_path, archive=archive)
    _error_after_progress(p, f"{COMPETITION}.zip", "run ./run.sh download again", *needles)
    left = [f.relative_to(work).as_posix() for f in (work / "data").rglob("*") if f.is_file()]
    assert left == [], left
    return work


def test_corrupt_download_archive(tmp_path):
    from kaggle_standin import zip_of

    work = _refused_archive(tmp_path, zip_of(_competition_files(), "corrupt"), "train.csv", "invalid block type")
    p, _, s = _download(tmp_path)  # the next run fetches the archive again, whole
    assert p.returncode == 0, p.stdout + p.stderr
    assert (work / "data" / "c" / "train.csv").read_bytes() == _competition_files()["train.csv"]


def test_encrypted_archive_member(tmp_path):
    from kaggle_standin import zip_of

    _refused_archive(tmp_path, zip_of(_competition_files(), "encrypted"), "member train.csv", "encrypted")


def test_unsupported_compression(tmp_path):
    from kaggle_standin import zip_of

    _refused_archive(tmp_path, zip_of(_competition_files(), "method99"), "member train.csv", "compression method 99")


def test_oversize_archive_member(tmp_path):
    files = {**_competition_files(), "huge.bin": bytes(2**20)}  # a few KB zipped
    total = sum(map(len, files.values()))
    p, work, s = _download(tmp_path, "--max-unpacked-gb", "0.0005", files=files)
    assert_one_line_error(p, f"{total:,} B", "--max-unpacked-gb 0.0005")
    assert not [r for r in s.requests if r[0] == "GET"] and not (work / "data" / "c").exists()  # not downloaded


def test_archive_member_not_listed(tmp_path):
    import io
    import warnings
    import zipfile

    from kaggle_standin import zip_of

    for d in ("extra", "twice"):
        (tmp_path / d).mkdir()
    extra = {**_competition_files(), "extra.bin": bytes(2**20)}  # a member that unpacks to 1 MB, not in the listing
    _refused_archive(tmp_path / "extra", zip_of(extra), f"extra.bin ({2**20:,} B), which Kaggle does not list")
    twice = io.BytesIO()  # a listed name held twice: 1 MB unpacked, then overwritten by the listed size
    with warnings.catch_warnings(), zipfile.ZipFile(twice, "w", zipfile.ZIP_DEFLATED) as z:
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name, which is the point
        z.writestr("train.csv", bytes(2**20))
        for path, data in _competition_files().items():
            z.writestr(path, data)
    _refused_archive(tmp_path / "twice", twice.getvalue(), "it holds train.csv twice")


def test_listing_beyond_first_page(tmp_path):
    from kaggle_standin import zip_of

    files = _competition_files()
    p, work, _ = _download(tmp_path, page=2)  # 6 files, 2 a page: every page is read, or the members are not listed
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{len(files)} files listed" in p.stdout
    last = list(files)[-1]  # on the third page
    p, _, _ = _download(tmp_path, page=2, out="data/d", archive=zip_of({k: v for k, v in files.items() if k != last}))
    _error_after_progress(p, f"Kaggle lists {last} ({len(files[last]):,} B), the archive lacks it")
    assert not (work / "data" / "d").exists()


def _kernel_package(pkg, slug="tinyk"):
    """kernels/<name>/ as ./run.sh kernel leaves it, in miniature: package.json (kernel tester/<slug>) and one small
    file per part."""
    from pipeline.kernel.spec import Package

    files = []
    for part in ("models", "code", "kernel"):
        (pkg / part).mkdir(parents=True)
        (pkg / part / "notes.txt").write_text(part)
        files.append({"path": f"{part}/notes.txt", "bytes": len(part)})
    Package(["a"], "tester", {"models": f"{slug}-models", "code": f"{slug}-code", "kernel": slug},
            "tiny-code-competition", {}, {}, "abc1234", "2026-01-01T00:00:00Z", files=files).write(pkg)
    return pkg


def test_kernel_name_escapes_folder(tmp_path):
    from test_upload import kaggle_env

    from kaggle_standin import StandIn

    work = tmp_path / "project"
    (work / "kernels").mkdir(parents=True)
    _kernel_package(tmp_path / "x")  # what kernels/../../x reaches
    with StandIn() as s:
        env = kaggle_env(tmp_path, s)
        for stage, *flags in (("upload", "--dry-run", "--unverified"), ("status",), ("submit",)):
            p = cli(stage, "../../x", *flags, cwd=work, env=env)
            assert_one_line_error(p, "kernel name '../../x'", "lower-case letters, digits and '-'")
        assert s.requests == []


def test_kernel_output_name_escapes_folder(tmp_path):
    from test_upload import kaggle_env

    from kaggle_standin import StandIn

    work = tmp_path / "project"
    pkg = _kernel_package(work / "kernels" / "tiny-k")
    with StandIn() as s:
        s.add_kernel("tester/tinyk")
        s.output = {"submission.csv": b"image_id,hotel_id\n", "../../../ESCAPED_OUTPUT.txt": b"escaped"}
        p = cli("status", "tiny-k", cwd=work, env=kaggle_env(tmp_path, s))
    assert_one_line_error(p, "'../../../ESCAPED_OUTPUT.txt'", "leaves", "nothing was fetched")
    assert not list(tmp_path.rglob("ESCAPED_OUTPUT.txt"))
    assert sorted(f.name for f in pkg.iterdir()) == ["code", "kernel", "models", "package.json"]  # no output/, no temp


def test_kaggle_json_is_a_list(tmp_path):
    from test_upload import KEY

    p, _, s = _download(tmp_path, kaggle_json=f'["tester", "{KEY}"]')
    assert_one_line_error(p, str(tmp_path / "kcfg" / "kaggle.json"), "a JSON list", "Create New Token")
    assert KEY not in p.stderr and s.requests == []


def test_kaggle_json_malformed(tmp_path):
    from test_upload import KEY

    p, _, s = _download(tmp_path, kaggle_json=f'{{"username": "tester", "key": "{KEY}"')
    assert_one_line_error(p, str(tmp_path / "kcfg" / "kaggle.json"), "not JSON", "Create New Token")
    assert KEY not in p.stderr and s.requests == []


def test_kernel_check_env_without_credentials(tmp_path, monkeypatch):
    import sys

    from test_upload import KEY

    from pipeline.kernel.check import run_offline

    pkg = _kernel_package(tmp_path / "kernels" / "tiny-k")
    (pkg / "kernel" / "kernel.py").write_text(  # a kernel that shows what of Kaggle's it was given
        "import os, pathlib\n"
        "print('given:', sorted(k for k in os.environ if k.startswith('KAGGLE_')), os.environ.get('KAGGLE_KEY'))\n"
        "pathlib.Path(os.environ['PIPELINE_OUTPUT_ROOT'], 'submission.csv').write_text('image_id,hotel_id\\n')\n")
    for var, value in (("KAGGLE_USERNAME", "tester"), ("KAGGLE_KEY", KEY), ("KAGGLE_API_TOKEN", f"KGAT_{KEY}"),
                       ("KAGGLE_CONFIG_DIR", str(tmp_path / "kcfg"))):
        monkeypatch.setenv(var, value)
    lines = []
    got = run_offline(pkg, tmp_path / "data", tmp_path / "work", python=sys.executable, log=lines.append)
    assert got.is_file() and "  | given: [] None" in lines, lines
    assert not any(KEY in line for line in lines)


def test_verified_json_damaged(tmp_path):
    import json
    from pathlib import Path

    from test_upload import kaggle_env

    work = tmp_path / "project"
    pkg = _kernel_package(work / "kernels" / "tiny-k")
    checked = {"data": "data/x", "matches": "runs/x.csv", "seconds": 1.0}
    for text, needle in (('{"package": "', "is damaged (not JSON"), ("[]", "is damaged (a JSON list"),
                         (json.dumps(dict(checked, package="0" * 64)), "another build of tiny-k")):
        (pkg / "verified.json").write_text(text)
        p = cli("upload", "tiny-k", "--dry-run", cwd=work, env=kaggle_env(tmp_path))
        assert_one_line_error(p, str(Path("kernels", "tiny-k", "verified.json")), needle, "./run.sh kernel tiny-k",
                              "--unverified")
    from pipeline.kernel.spec import package_digest

    (pkg / "verified.json").write_text(json.dumps(dict(checked, package=package_digest(pkg))))
    p = cli("upload", "tiny-k", "--dry-run", cwd=work, env=kaggle_env(tmp_path))
    assert p.returncode == 0 and "dry run: nothing was uploaded" in p.stdout, p.stdout + p.stderr
    edited = next(f for f in sorted((pkg / "kernel").rglob("*")) if f.is_file())
    data = bytearray(edited.read_bytes())
    data[0] ^= 1
    edited.write_bytes(bytes(data))  # the same size, so package.json's record of it still holds
    p = cli("upload", "tiny-k", "--dry-run", cwd=work, env=kaggle_env(tmp_path))
    assert_one_line_error(p, "another build of tiny-k")


def test_package_replace_killed(tmp_path):
    from test_upload import kaggle_env

    from pipeline.kernel.spec import Package

    work = tmp_path / "project"
    kernels = work / "kernels"
    _kernel_package(kernels / ".tiny-k.old")  # a rebuild killed between its two renames: the good package aside
    p = cli("upload", "tiny-k", "--dry-run", "--unverified", cwd=work, env=kaggle_env(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr  # put back, not "build it first"
    assert sorted(f.name for f in kernels.iterdir()) == ["tiny-k"]
    assert Package.read(kernels / "tiny-k").slugs["kernel"] == "tinyk"

    from pipeline.kernel.package import install

    install(_kernel_package(kernels / ".tiny-k.stage", slug="newer"), kernels / "tiny-k")  # a rebuild's last step
    assert sorted(f.name for f in kernels.iterdir()) == ["tiny-k"]
    assert Package.read(kernels / "tiny-k").slugs["kernel"] == "newer"
    (kernels / "tiny-k").rename(kernels / ".tiny-k.old")  # killed again; the next rebuild swaps in its package
    install(_kernel_package(kernels / ".tiny-k.stage", slug="newest"), kernels / "tiny-k")
    assert sorted(f.name for f in kernels.iterdir()) == ["tiny-k"]
    assert Package.read(kernels / "tiny-k").slugs["kernel"] == "newest"


# ---- damaged run files, config values, folds, run names, failed runs

def _embedded(data, runs):
    """Run a's embeddings made (in process: quicker than the CLI), for a test to damage; its embeddings folder."""
    from pipeline.config import load_config
    from pipeline.retrieval.embeddings import ensure_embeddings

    ensure_embeddings(load_config(str(runs / "a.yaml"), tiny_overrides(data.parent, runs, "epochs=1")),
                      log=lambda *a: None)
    return runs / "a" / "fold0" / "embeddings"


def _cut_in_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def _object_dtype(path):
    np.save(path, np.array([{"row": 1}] * 3, dtype=object))


@pytest.mark.parametrize("file, damage, what, stage", [
    ("gallery.npy", _cut_in_half, "not a readable .npy", "ensemble"),
    ("test.npy", _object_dtype, "not a readable .npy", "evaluate"),
    ("manifest.json", lambda p: p.write_text('{"gallery": {"key": '), "not JSON", "embed")])
def test_damaged_embeddings_cache(data, runs, file, damage, what, stage):
    path = _embedded(data, runs) / file
    damage(path)
    extra = ["--out", "sub"] if stage == "ensemble" else []
    p = cli(stage, runs / "a.yaml", *extra, *tiny_overrides(data.parent, runs, "epochs=1"), cwd=data.parent,
            env=PYPATH)
    assert_one_line_error(p, f"{path} is damaged ({what}", "delete it and re-embed: ./run.sh embed a --fold 0")


def test_image_cache_index_damaged(data, tmp_path):
    from pipeline.config import load_config
    from pipeline.data.image_cache import cache_dataset

    cfg = load_config("default", [f"data={data}", f"image_cache_dir={tmp_path / 'cache'}", "image_scale=1.5"])
    cache_dataset(cfg, 32, log=lambda *a: None)
    index = next((tmp_path / "cache").rglob("train.index.csv"))
    lines = index.read_text().splitlines()
    for text in ("\n".join([*lines[:1], lines[1] + "zz", *lines[2:]]), "path,size\nx.jpg,1\n"):  # a cell; columns
        index.write_text(text)
        _error(lambda: cache_dataset(cfg, 32, log=lambda *a: None), str(index), "delete it and run ./run.sh "
               "cache-images")


def test_epochs_not_positive(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns", "epochs=0"))
    assert_one_line_error(p, "epochs=0: must be >= 1")
    assert not (tmp_path / "newruns").exists()
    p = cli("train", tmp_path / "fresh.yaml", "--folds", "all", *tiny_overrides(data.parent, tmp_path, "epochs=-3"))
    assert_one_line_error(p, "epochs=-3: must be >= 1")


def test_checkpoint_without_config(data, runs):
    import torch

    run = runs / "a" / "fold0"
    for name in ("best.pt", "last.pt"):
        torch.save({"w": torch.zeros(3)}, run / name)
    over = tiny_overrides(data.parent, runs, "epochs=1")
    assert_one_line_error(cli("embed", runs / "a.yaml", *over), f"{run / 'best.pt'} is damaged (no 'model'",
                          "'config'", "delete it and retrain: ./run.sh train a --fold 0")
    assert_one_line_error(cli("train", runs / "a.yaml", "--resume", *over), f"{run / 'last.pt'} is damaged",
                          "'optimizer'", "delete it and retrain")


def test_config_value_out_of_range(data, tmp_path):
    from pipeline.config import load_config

    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns", "lr=-1"))
    assert_one_line_error(p, "command line: lr=-1.0: must be >= 0", "pipeline/configs/default.yaml")
    assert not (tmp_path / "newruns").exists()
    for bad, needle in (("lr=.nan", "lr=nan: must be >= 0"), ("embedding_dim=0", "embedding_dim=0: must be >= 1"),
                        ("batch_size=0", "batch_size=0: must be >= 1"),
                        ("batch_size=-8", "batch_size=-8: must be >= 1"),
                        ("aug_p_color=1.5", "aug_p_color=1.5: must be >= 0 and <= 1")):
        _error(lambda: load_config(str(tmp_path / "fresh.yaml"), [bad]), needle)  # tests/test_config.py: every key


def test_fold_not_in_folds_file(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("train", tmp_path / "fresh.yaml", "--fold", "99", *tiny_overrides(data.parent, tmp_path / "newruns"))
    assert_one_line_error(p, "fold 99 is not in", "folds.csv (its folds: 0-4)", "fold=-1")
    assert not (tmp_path / "newruns").exists()


def test_run_name_escapes_folder(data, tmp_path):
    escaped = tmp_path / "x" / "ESCAPED_RUN"
    runs = tmp_path / "deep" / "er" / "runs"
    (tmp_path / "evil.yaml").write_text("name: ../../../x/ESCAPED_RUN\n")
    p = cli("train", tmp_path / "evil.yaml", *tiny_overrides(data.parent, runs))
    assert_one_line_error(p, str(tmp_path / "evil.yaml"), "name '../../../x/ESCAPED_RUN'", "rename it")
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    p = cli("ensemble", tmp_path / "fresh.yaml", "--out", "../../x/ESCAPED_RUN", "--overrides",
            *tiny_overrides(data.parent, runs), cwd=tmp_path, env=PYPATH)  # every output name: the same rule
    assert_one_line_error(p, "--out: name '../../x/ESCAPED_RUN'", "rename it")
    best = tmp_path / "best.json"  # an ensemble-report's best.json feeds its configs back in by name too
    from pipeline.config import config_from_dict

    _error(lambda: config_from_dict({"name": "../../x/ESCAPED_RUN"}, str(best)), str(best), "name '../../x/")
    assert not escaped.exists() and not runs.exists()


def test_train_failing_before_first_checkpoint(data, tmp_path):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    runs = tmp_path / "newruns"
    left = runs / "fresh" / "fold0" / "events.out.tfevents.1"  # what a SIGKILL before any checkpoint leaves
    left.parent.mkdir(parents=True)
    left.write_bytes(b"")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, runs, "arcface.s=1e30"))
    assert_one_line_error(p, "loss became nan at step", "no checkpoint was written yet: lower lr")
    assert not (runs / "fresh").exists()  # a folder of config.yaml alone would look like a run
    bad = _first_train_image(data)
    bad.write_bytes(b"not an image")
    p = cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, runs))
    assert_one_line_error(p, str(bad), "remove or replace it")
    assert not (runs / "fresh").exists()


def _outside(data, tmp_path, label_map=None):
    """An outside source (extra_data) made of the tiny data's own training folders, with this label map."""
    folder = tmp_path / "outside"
    shutil.copytree(data / "train_images", folder / "train_images")
    if label_map is not None:
        (folder / "label_map.csv").write_text(label_map)
    return folder


def _train_with_outside(data, tmp_path, folder):
    (tmp_path / "fresh.yaml").write_text("# a new config\n")
    return cli("train", tmp_path / "fresh.yaml", *tiny_overrides(data.parent, tmp_path / "newruns",
                                                                 f"extra_data=[{folder}]"))


def test_extra_label_map_collision(data, tmp_path):
    a, b = sorted(p.name for p in (data / "train_images").iterdir())[:2]
    folder = _outside(data, tmp_path, f"extra_label,label\n{a},{a}\n{b},{a}\n{a},{b}\n")
    p = _train_with_outside(data, tmp_path, folder)
    assert_one_line_error(p, "label_map.csv row 4", f"'{a}' maps to '{b}' here and to '{a}' at row 2",
                          "several outside classes may share a competition class")
    assert not (tmp_path / "newruns").exists()


def test_extra_label_map_bad(data, tmp_path):
    folder = _outside(data, tmp_path, "outside,hotel\n1,2\n")
    p = _train_with_outside(data, tmp_path, folder)
    assert_one_line_error(p, "label_map.csv: missing column(s) extra_label, label", "extra_data entry 1")
    from pipeline.config import load_config
    from pipeline.data.folds import split

    a = sorted(p.name for p in (data / "train_images").iterdir())[0]
    (folder / "label_map.csv").write_text(f"extra_label,label\n{a},no_such_hotel\n")
    cfg = load_config("demo_lite0", tiny_overrides(data.parent, tmp_path / "newruns", f"extra_data=[{folder}]"))
    _error(lambda: split(cfg), "label_map.csv row 2", "label 'no_such_hotel' is not a competition class")


def test_extra_data_not_a_layout(data, tmp_path):
    (tmp_path / "photos").mkdir()
    p = _train_with_outside(data, tmp_path, tmp_path / "photos")
    assert_one_line_error(p, "extra_data entry 1", "not a folder of a known layout", "train_images/<class>/<image>",
                          "train.csv", "gallery/<class>/<image>")
    assert not (tmp_path / "newruns").exists()


def test_docs_table_matches():
    """docs/kaggle.md's "Bad input" table lists exactly CATALOGUE's rows, in order, and each has a test here."""
    text = (ROOT / "docs" / "kaggle.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    ids = re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)
    assert ids == list(CATALOGUE)
    assert len(ids) >= 20
    for i in ids:
        assert callable(globals().get(f"test_{i}")), i
        assert CATALOGUE[i] in section, i
