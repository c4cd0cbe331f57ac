"""The bad-input catalogue (docs/kaggle.md, "Bad input"): one test per row. Each input is either handled as a
competitor would want (stated in CATALOGUE) or stopped with a one-line error naming the file / row / key and the fix,
a non-zero exit and nothing written half-way. test_docs_table_matches keeps docs/kaggle.md and this file in step."""
import re
import shutil

import numpy as np
import pytest

from conftest import ROOT, assert_one_line_error, cli, tiny_overrides

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
    return out


def test_grayscale_image(tmp_path):
    out = _rgb_of(tmp_path, "g.png", lambda im, p: im.convert("L").save(p))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_image(tmp_path):
    _rgb_of(tmp_path, "a.png", lambda im, p: im.convert("RGBA").save(p))


def test_cmyk_jpeg(tmp_path):
    _rgb_of(tmp_path, "c.jpg", lambda im, p: im.convert("CMYK").save(p))


def test_16bit_png(tmp_path):
    import cv2

    path = _image(tmp_path, "d.png", lambda p: cv2.imwrite(str(p), np.full((40, 30), 65535, np.uint16)))
    out = _read(path)
    assert out.shape == (40, 30, 3) and out.dtype == np.uint8 and out.max() == 255


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


def test_exif_rotated_image(tmp_path):
    from PIL import Image

    def save(p):
        im = Image.fromarray(np.zeros((40, 30, 3), np.uint8))
        exif = im.getexif()
        exif[0x0112] = 6  # "rotate 90 CW to display"
        im.save(p, exif=exif)

    assert _read(_image(tmp_path, "e.jpg", save)).shape == (30, 40, 3)


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
    assert not runs.exists() or not list(runs.rglob("*.pt"))


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
