"""make-data: deterministic, competition-shaped synthetic folder; bad input is a one-line error."""
import csv

import cv2
import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.data.synth import MARKER, make_dataset

from conftest import assert_one_line_error, cli

HOTELS = 12


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth") / "d", seed=5, hotels=HOTELS, masks=20)


def test_same_seed_is_byte_identical_and_other_seed_differs(data, tmp_path):
    again = make_dataset(tmp_path / "again", seed=5, hotels=HOTELS, masks=20)
    assert files(data) == files(again)
    other = files(make_dataset(tmp_path / "other", seed=6, hotels=HOTELS, masks=20))
    assert other != files(data)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_layout(data):
    hotels = sorted(p.name for p in (data / "train_images").iterdir())
    assert len(hotels) == HOTELS and all(h.isdigit() and 4 <= len(h) <= 6 for h in hotels)
    names = []
    for h in hotels:
        jpgs = sorted((data / "train_images" / h).glob("*.jpg"))
        assert len(jpgs) >= 2
        for p in jpgs:
            img = cv2.imread(str(p))
            assert img is not None and 128 <= max(img.shape[:2]) <= 192
        names += [p.name for p in jpgs]
    tests = sorted(p.name for p in (data / "test_images").glob("*.jpg"))
    assert tests and len(set(names + tests)) == len(names) + len(tests)  # ids unique across the dataset
    sub, truth = rows(data / "sample_submission.csv"), rows(data / "test_truth.csv")
    assert [r["image_id"] for r in sub] == tests == [r["image_id"] for r in truth]  # once each, sorted
    assert {r["hotel_id"] for r in truth} <= set(hotels)
    for r in sub:
        guess = r["hotel_id"].split(" ")
        assert len(guess) == 5 and set(guess) <= set(hotels)
    masks = sorted((data / "train_masks").glob("*"))
    assert len(masks) == 20 and all(p.suffix == ".png" for p in masks)
    for p in masks:
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.ndim == 3 and m.shape[2] == 3
        assert (m.reshape(-1, 3) == (0, 0, 255)).all(1).any()  # pure red, BGR
    assert (data / MARKER).is_file()


def test_test_images_carry_a_red_occlusion(data):
    for p in sorted((data / "test_images").glob("*.jpg")):
        b, g, r = np.moveaxis(cv2.imread(str(p)).astype(int), 2, 0)
        red = ((r > 200) & (g < 60) & (b < 60)).mean()
        assert 0.05 <= red <= 0.5, (p.name, red)
    for p in sorted((data / "train_images").rglob("*.jpg"))[:20]:  # train photos are not occluded
        b, g, r = np.moveaxis(cv2.imread(str(p)).astype(int), 2, 0)
        assert ((r > 200) & (g < 60) & (b < 60)).mean() < 0.01


def test_rerun_replaces_previous_output(tmp_path):
    out = make_dataset(tmp_path / "d", seed=1, hotels=5, masks=3)
    (out / "stale.txt").write_text("x")
    make_dataset(out, seed=2, hotels=5, masks=3)
    assert not (out / "stale.txt").exists() and '"seed": 2' in (out / MARKER).read_text()


def test_bad_input(tmp_path):
    with pytest.raises(UserError, match="--hotels"):
        make_dataset(tmp_path / "d", hotels=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a make-data output"):
        make_dataset(mine, hotels=5, masks=3)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # nothing half-written beside it


def test_cli_bad_hotels_is_one_line(tmp_path):
    proc = cli("make-data", "--out", tmp_path / "x", "--hotels", "1")
    assert_one_line_error(proc, "--hotels")
    assert not (tmp_path / "x").exists()
