import random

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.data.folds import assign_folds, read_folds, write_folds
from pipeline.data.images import read_image
from pipeline.data.layouts import LAYOUTS, Item, load_dataset


def _img(path, color=(200, 30, 40), size=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((*size, 3), np.uint8)
    a[:] = color
    Image.fromarray(a).save(path)


def make_hotelid(root, hotels=3, per=3):
    for h in range(hotels):
        for i in range(per):
            _img(root / "train_images" / str(100 + h) / f"h{h}_{i}.jpg")
    for i in range(2):
        _img(root / "test_images" / f"t{i}.jpg")
    (root / "sample_submission.csv").write_text("image_id,hotel_id\nt1.jpg,1 2 3 4 5\nt0.jpg,1 2 3 4 5\n")
    return root


def test_hotelid_layout(tmp_path):
    ds = load_dataset(make_hotelid(tmp_path))
    assert len(ds.train) == 9 and ds.classes == ["100", "101", "102"]
    assert ds.test_ids == ["t1.jpg", "t0.jpg"]  # the sample submission's order
    assert ds.train[0].image_id == "100/h0_0.jpg" and ds.train[0].label == "100"


def test_csv_layout(tmp_path):
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "train.csv").write_text("image,label\n" + "".join(f"imgs/{i}.png,w{i % 2}\n" for i in range(4)))
    (tmp_path / "test.csv").write_text("image\nimgs/0.png\n")  # relative to csv.test_dir (test_images/)
    with pytest.raises(UserError, match=r"test.csv row 2: image 'imgs/0.png' not found .*; set csv.test_dir=''"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, {"csv": {"test_dir": ""}})
    assert [it.label for it in ds.train] == ["w0", "w1", "w0", "w1"] and ds.test_ids == ["0.png"]
    assert (ds.id_column, ds.label_column) == ("image_id", "label")  # no sample submission: the layout's defaults
    assert set(LAYOUTS) >= {"hotelid", "csv"}


def test_csv_layout_custom_columns_and_escape(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("path,whale\na.png,x\n../etc/passwd,y\n")
    cfg = {"layout": "csv", "csv": {"image_column": "path", "label_column": "whale"}}
    with pytest.raises(UserError, match="row 3.*leaves the data folder"):
        load_dataset(tmp_path, cfg)


def test_csv_without_label_column(tmp_path):
    (tmp_path / "train.csv").write_text("image\na.png\n")
    with pytest.raises(UserError, match=r"train.csv: missing column\(s\) label"):
        load_dataset(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dataset(tmp_path / "nope")


def test_read_image_conversions(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # EXIF: rotate 90 degrees clockwise to display
    im.save(tmp_path / "exif.jpg", exif=exif)
    assert read_image(tmp_path / "exif.jpg").shape == (40, 20, 3)
    Image.fromarray(a[:, :, 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([a, np.full((20, 40), 99, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((20, 40, 3), 40000, np.uint16))
    for name in ("gray.png", "rgba.png", "cmyk.jpg", "deep.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (20, 40, 3) and img.dtype == np.uint8, name
    assert read_image(tmp_path / "cmyk.jpg")[10, 5].min() > 240  # white stays white through CMYK


def test_not_an_image(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(UserError, match="x.jpg: not a readable image"):
        read_image(tmp_path / "x.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")


def _items(sizes):
    return [Item(f"{c}/{i}.jpg", None, c) for c, n in sizes.items() for i in range(n)]


def test_folds_stratified_seeded_order_independent():
    rng = random.Random(0)
    sizes = {f"c{i}": rng.randint(1, 30) for i in range(60)}
    items = _items(sizes)
    a = assign_folds(items, 10, 42)
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert assign_folds(shuffled, 10, 42) == a  # file-system order does not matter
    assert assign_folds(items, 10, 43) != a
    counts = np.bincount([f for f in a.values() if f >= 0], minlength=10)
    assert counts.max() - counts.min() <= 1  # balanced
    for c, n in sizes.items():
        folds = [a[f"{c}/{i}.jpg"] for i in range(n)]
        if n == 1:
            assert folds == [-1]  # single-image classes always train
        else:
            assert any(f != 0 for f in folds)  # at least one image left to train on fold 0
            per = np.bincount(folds, minlength=10)
            assert per.max() - per.min() <= 1 or n < 10  # stratified: spread over folds
    val = sum(1 for f in a.values() if f == 0) / len(a)
    assert 0.08 < val < 0.12  # the 90/10 split


def test_folds_file_must_match_data(tmp_path):
    ds = load_dataset(make_hotelid(tmp_path / "d"))
    write_folds(ds, tmp_path / "folds.csv", n_folds=3)
    assert set(read_folds(tmp_path / "folds.csv", ds)) == {it.image_id for it in ds.train}
    _img(tmp_path / "d" / "train_images" / "100" / "new.jpg")
    with pytest.raises(UserError, match="does not match.*rerun ./run.sh folds"):
        read_folds(tmp_path / "folds.csv", load_dataset(tmp_path / "d"))


def make_query_gallery(root, classes=3, gallery=4, queries=2):
    """Seed 000's folder layout: gallery/<class>/<image>.png and query/<class>/<image>.png (cv2-written)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        color = rng.integers(0, 255, 3)
        for split, n in (("gallery", gallery), ("query", queries)):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(color + rng.integers(-20, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
                assert cv2.imwrite(str(root / split / f"c{c}" / f"{split}{i}.png"), img)
    return root


def test_query_gallery_layout(tmp_path):
    root = make_query_gallery(tmp_path / "qg")
    ds = load_dataset(root)  # auto-detected
    assert "query_gallery" in LAYOUTS
    assert len(ds.train) == 12 and ds.classes == ["c0", "c1", "c2"]
    assert ds.train[0].image_id == "c0/gallery0.png" and ds.train[0].label == "c0"
    # the labelled queries are the test items, labels kept; submission order = folder order
    assert [(it.image_id, it.label) for it in ds.test[:2]] == [("c0/query0.png", "c0"), ("c0/query1.png", "c0")]
    assert ds.test_ids == [it.image_id for it in ds.test] and len(ds.test) == 6
    assert read_image(ds.test[0].path).shape == (24, 24, 3)
    # query/ is optional; an empty gallery is a UserError naming the layout
    import shutil

    shutil.rmtree(root / "query")
    assert load_dataset(root, {"layout": "query_gallery"}).test == []
    empty = tmp_path / "empty"
    (empty / "gallery").mkdir(parents=True)
    with pytest.raises(UserError, match="gallery/<class>/<image>"):
        load_dataset(empty)


def test_read_table_keeps_ids_as_strings_and_columns_in_place(tmp_path):
    from pipeline.core.io import read_table

    (tmp_path / "t.csv").write_text("image_id,hotel_id\n007.jpg,0042,\nb.jpg,,\n\nNA,nan\n")
    rows = read_table(tmp_path / "t.csv", required=["image_id", "hotel_id"]).to_dict("records")
    # a trailing extra field does not shift the columns; ids and empty cells stay strings
    assert rows == [{"image_id": "007.jpg", "hotel_id": "0042"}, {"image_id": "b.jpg", "hotel_id": ""},
                    {"image_id": "NA", "hotel_id": "nan"}]
