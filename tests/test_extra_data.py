"""Outside data in two stages (data/extra.py): the class space extra_data makes, its images never validated,
extra_images' gallery, make-data --extra, and a stage-1 -> stage-2 init_from chain at tiny size."""
import hashlib
import shutil

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.extra import ExtraItem
from pipeline.data.folds import gallery_items, labelled, split
from pipeline.data.layouts import load_dataset

from conftest import PYPATH, assert_one_line_error, cli, tiny_overrides


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def extra(tiny_data, tmp_path_factory):
    """An outside source for tiny_data (seed 3, 10 hotels): 6 other hotels + 3 of tiny_data's under other ids."""
    from pipeline.data.synth import make_extra

    return make_extra(tmp_path_factory.mktemp("outside") / "data-extra", seed=3, hotels=10, extra=6)


def _cfg(tiny_data, *overrides):
    return load_config("demo_lite0", [f"data={tiny_data / 'data'}", f"folds_file={tiny_data / 'folds.csv'}",
                                      *overrides])


def _error(fn, *needles):
    with pytest.raises(UserError) as e:
        fn()
    assert "\n" not in str(e.value)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_make_data_extra_writes_the_map_and_leaves_the_main_data_unchanged(tmp_path):
    from pipeline.data.synth import make_dataset

    plain = make_dataset(tmp_path / "plain", seed=4, hotels=5)
    p = cli("make-data", "--out", tmp_path / "with", "--seed", 4, "--hotels", 5, "--extra", 4)
    assert p.returncode == 0, p.stderr
    assert _digest(tmp_path / "with") == _digest(plain)  # --extra draws from streams of its own
    ours = load_dataset(plain)
    outside = load_dataset(tmp_path / "with-extra")
    rows = pd.read_csv(tmp_path / "with-extra" / "label_map.csv", dtype=str)
    assert list(rows.columns) == ["extra_label", "label"] and len(rows) == 2  # 4 new hotels + 4 // 2 again
    assert set(rows["label"]) <= set(ours.classes) and set(rows["extra_label"]) <= set(outside.classes)
    assert len(outside.classes) == 6 and not set(outside.classes) & set(ours.classes) and not outside.test
    assert all(len(c) == 7 for c in outside.classes)  # the competition's ids have at most 6 digits
    again = cli("make-data", "--out", tmp_path / "with", "--seed", 4, "--hotels", 5, "--extra", -1)
    assert_one_line_error(again, "--extra -1")


def test_class_space_of_prefixed_and_mapped_classes(tiny_data, extra):
    mapping = pd.read_csv(extra / "label_map.csv", dtype=str)
    outside = load_dataset(extra)
    mapped = set(mapping["extra_label"])
    ds, train, val, classes = split(_cfg(tiny_data, f"extra_data=[{extra}]"))
    comp = load_dataset(tiny_data / "data").classes
    own = sorted(f"extra:{c}" for c in outside.classes if c not in mapped)
    assert classes == comp + own and len(own) == 6
    added = [it for it in train if isinstance(it, ExtraItem)]
    assert len(added) == len(outside.train) and all(it.image_id.startswith("extra:") for it in added)
    to = dict(zip(mapping["extra_label"], mapping["label"]))
    for it, src in zip(added, outside.train):
        assert it.label == to.get(src.label, f"extra:{src.label}") and it.mapped == (src.label in to)
    assert sum(it.mapped for it in added) == sum(it.label in mapped for it in outside.train) > 0

    _, train2, _, unmapped = split(_cfg(tiny_data, f"extra_data=[{{path: {extra}, label_map: ''}}, {extra}]"))
    assert unmapped == comp + sorted([f"extra:{c}" for c in outside.classes]
                                     + [f"extra2:{c}" for c in outside.classes if c not in mapped])
    ids = [it.image_id for it in train2]
    assert len(ids) == len(set(ids)) == len(train) + len(outside.train)  # the same folder twice, kept apart


def test_outside_images_are_never_validated(tiny_data, extra):
    _, plain_train, plain_val, _ = split(_cfg(tiny_data))
    for mode in ("train", "gallery", "both"):
        ds, train, val, _ = split(_cfg(tiny_data, f"extra_data=[{extra}]", f"extra_images={mode}"))
        assert [it.image_id for it in val] == [it.image_id for it in plain_val]
        assert labelled(train) == plain_train  # training's validation ranks against the competition's alone
        assert len(train) > len(plain_train) if mode != "gallery" else train == plain_train


def test_extra_images_decides_the_ranking_gallery(tiny_data, extra):
    comp = load_dataset(tiny_data / "data")
    for mode, in_gallery in (("train", False), ("gallery", True), ("both", True)):
        ds, _, _, classes = split(_cfg(tiny_data, f"extra_data=[{extra}]", f"extra_images={mode}"))
        added = gallery_items(ds)[len(comp.train):]
        assert gallery_items(ds)[:len(comp.train)] == comp.train
        assert bool(added) == in_gallery
        # mapped images only, under their competition class: an outside class never reaches a prediction
        assert all(isinstance(it, ExtraItem) and it.mapped and it.label in comp.classes for it in added)
        assert (len(classes) > len(comp.classes)) == (mode != "gallery")


def _label_map(tmp_path, extra, text):
    folder = tmp_path / "outside"
    shutil.copytree(extra, folder)
    (folder / "label_map.csv").write_text(text)
    return folder


def test_bad_label_maps_are_one_line_errors(tiny_data, extra, tmp_path):
    rows = pd.read_csv(extra / "label_map.csv", dtype=str)
    a, b = rows["extra_label"][0], rows["extra_label"][1]
    comp = rows["label"].tolist()
    cases = [
        (f"extra_label,label\n{a},{comp[0]}\n{b},{comp[0]}\n{a},{comp[1]}\n", ["row 4", "label-map collision", a]),
        ("outside,label\n1,2\n", ["missing column(s) extra_label", "extra_data entry 1"]),
        (f"extra_label,label\n{a},999\n", ["row 2", "label '999' is not a competition class"]),
        (f"extra_label,label\n{a},\n", ["row 2", "empty label"]),
    ]
    for text, needles in cases:
        folder = _label_map(tmp_path / str(len(text)), extra, text)
        _error(lambda: split(_cfg(tiny_data, f"extra_data=[{folder}]")), *needles)
    same = _label_map(tmp_path / "same", extra, f"extra_label,label\n{a},{comp[0]}\n{b},{comp[0]}\n{a},{comp[0]}\n")
    _, train, _, _ = split(_cfg(tiny_data, f"extra_data=[{same}]"))  # two outside ids of one hotel: fine
    assert {it.label for it in train if isinstance(it, ExtraItem) and it.mapped} == {comp[0]}


def test_bad_extra_entries_are_one_line_errors(tiny_data, extra, tmp_path):
    (tmp_path / "empty").mkdir()
    for value, needles in ((f"[{tmp_path / 'empty'}]", ["extra_data entry 1", "not a folder of a known layout"]),
                           (f"[{tmp_path / 'gone'}]", ["extra_data entry 1", "not found"]),
                           (f"[{extra}, {{path: {extra}, labels: x}}]", ["extra_data entry 2", "unknown key 'labels'"]),
                           (f"[{{path: {extra}, label_map: {tmp_path / 'no.csv'}}}]", ["label map", "not found"])):
        _error(lambda: split(_cfg(tiny_data, f"extra_data={value}")), *needles)
    _error(lambda: split(_cfg(tiny_data, f"extra_data=[{extra}]", "extra_images=all")), "extra_images='all'")


def test_two_stages_reinitialise_the_head_and_rank_mapped_outside_images(tiny_data, extra, tmp_path):
    runs = tmp_path / "runs"
    for name in ("stage1", "stage2"):
        (tmp_path / f"{name}.yaml").write_text("# a stage\n")
    p = cli("train", tmp_path / "stage1.yaml", *tiny_overrides(tiny_data, runs, "epochs=1", f"extra_data=[{extra}]"))
    assert p.returncode == 0, p.stderr
    assert "outside data:" in p.stdout and "16 classes" in p.stdout, p.stdout  # 10 + 6 outside hotels of their own
    first = runs / "stage1" / "fold0"
    p = cli("train", tmp_path / "stage2.yaml", *tiny_overrides(tiny_data, runs, "epochs=1", f"init_from={first}"))
    assert p.returncode == 0, p.stderr
    assert "head re-initialised (its 16 classes are not this run's 10" in p.stdout, p.stdout
    from pipeline.core.checkpoint import load

    assert len(load(runs / "stage2" / "fold0" / "best.pt")["classes"]) == 10
    # stage 2 ranked with the mapped outside images in its gallery: none of the outside classes is ever predicted
    p = cli("ensemble", tmp_path / "stage2.yaml", "--out", "s2g", "--overrides",
            *tiny_overrides(tiny_data, runs, f"extra_data=[{extra}]", "extra_images=gallery"), cwd=tmp_path, env=PYPATH)
    assert p.returncode == 0, p.stderr
    gallery = pd.read_csv(runs / "stage2" / "fold0" / "embeddings" / "gallery.csv", dtype=str)
    comp = load_dataset(tiny_data / "data")
    outside = gallery[gallery["image_id"].str.startswith("extra:")]
    assert len(gallery) == len(comp.train) + len(outside) and len(outside) > 0
    assert set(outside["label"]) <= set(comp.classes)
    predicted = pd.read_csv(tmp_path / "submissions" / "s2g.csv", dtype=str)["hotel_id"].str.split()
    assert {c for row in predicted for c in row} <= set(comp.classes)
