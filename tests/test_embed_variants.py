"""Embedding-time variants of `embed` (flip TTA, multi-crop queries, val-pipeline gallery) on the tiny model: each
checked against a hand computation from the loaded checkpoint, and each cached under its own file stem."""
import json

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import UserError

from conftest import assert_one_line_error, cli, copy_runs, tiny_overrides

DEFAULT_FILES = {f"{s}.{ext}" for s in ("gallery", "val", "test", "centers") for ext in ("npy", "csv")} | {
    "manifest.json"}


@pytest.fixture(scope="module")
def trained(trained, tmp_path_factory):
    """(config, loaded model, checkpoint state, {split: items}) of a tiny run trained for one epoch."""
    from pipeline.config import load_config, run_dir
    from pipeline.core import checkpoint
    from pipeline.data.folds import split
    from pipeline.model.embedder import build_model

    tiny_data, _ = trained
    runs = copy_runs(trained, tmp_path_factory.mktemp("runs"))  # the session's run a: a copy, its caches its own
    cfg_path = runs / "a.yaml"
    overrides = tiny_overrides(tiny_data, runs, "epochs=1")
    cfg = load_config(str(cfg_path), overrides)
    state = checkpoint.load(run_dir(cfg) / f"{cfg['checkpoint']}.pt", cfg)
    model, _ = build_model(state["config"], with_weights=False)
    model.load_state_dict(state["model"])
    model.eval()
    ds, _, val_items, _ = split(cfg)
    by_id = {it.image_id: it for it in ds.test}
    items = {"gallery": ds.train, "val": val_items, "test": [by_id[i] for i in ds.test_ids]}
    return {"cfg": cfg, "cfg_path": cfg_path, "overrides": overrides, "model": model, "state": state,
            "items": items}


def _embed(t, **kw):
    from pipeline.retrieval.embeddings import Variant
    from pipeline.retrieval.runsets import prepare_run

    return prepare_run(t["cfg"], Variant(**kw), log=lambda *a: None)


@torch.no_grad()
def _e(model, x):
    """The model's raw embeddings of a (n, C, H, W) array: uint8 pixels (the model normalises them) or float32
    already normalised by hand."""
    x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)
    return model(torch.from_numpy(x)).float()


def _mtimes(d):
    return {p.name: p.stat().st_mtime_ns for p in d.iterdir()}


def test_defaults_write_todays_files_and_recompute_nothing(trained):
    from pipeline.config import run_dir
    from pipeline.core import checkpoint
    from pipeline.data.transforms import build_transform, describe
    from pipeline.retrieval.embeddings import cache_key, load_split, made_by

    r = _embed(trained)
    d = r.dir
    assert r.stems == {"gallery": "gallery", "val": "val", "test": "test"}
    assert r.computed == ["gallery", "val", "test"]
    assert {p.name for p in d.iterdir()} == DEFAULT_FILES
    manifest = json.loads((d / "manifest.json").read_text())
    assert set(manifest) == {"gallery", "val", "test", "centers"}
    assert manifest["centers"]["key"] == checkpoint.file_hash(run_dir(trained["cfg"]) / "best.pt")
    # the plain key (no variant text), so the default stems keep the names and keys they had before the variants
    cfg, st = trained["cfg"], trained["state"]
    made = made_by(np.float16, cfg["amp"], "cpu")
    ck_hash = checkpoint.file_hash(run_dir(cfg) / f"{cfg['checkpoint']}.pt")
    for name, kind in (("gallery", "test"), ("val", "val"), ("test", "test")):
        tfm = build_transform(kind, cfg, st["image_size"])
        assert manifest[name]["key"] == cache_key(ck_hash, trained["items"][name], describe(tfm), st["image_size"],
                                                  made)
        loaded = load_split(d, name)
        emb, ids = loaded.array, loaded.ids
        assert ids == [it.image_id for it in trained["items"][name]]
        assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=1e-2)
    before = _mtimes(d)
    again = _embed(trained)
    assert again.computed == [] and _mtimes(d) == before


def test_flip_equals_hand_computed(trained):
    from pipeline.data.images import read_image
    from pipeline.data.transforms import apply, build_transform
    from pipeline.retrieval.embeddings import load_split

    before = _mtimes(_embed(trained).dir)
    r = _embed(trained, flip=True)
    assert r.stems == {"gallery": "gallery.flip", "val": "val.flip", "test": "test.flip"}
    assert r.computed == ["gallery.flip", "val.flip", "test.flip"]
    d, cfg, st, model = r.dir, trained["cfg"], trained["state"], trained["model"]
    for name, kind in (("gallery", "test"), ("val", "val"), ("test", "test")):
        tfm = build_transform(kind, cfg, st["image_size"])
        items = trained["items"][name][:3]
        x = np.stack([apply(tfm, read_image(it.path), i) for i, it in enumerate(items)])  # sample i, seed i
        want = F.normalize(_e(model, x) + _e(model, x[..., ::-1]), dim=1).numpy()
        loaded = load_split(d, r.stems[name])
        got, ids = loaded.array, loaded.ids
        assert ids == [it.image_id for it in trained["items"][name]]
        assert np.abs(got[:3].astype(np.float32) - want).max() < 2e-3, name
        plain = load_split(d, name).array
        assert np.abs(plain[:3].astype(np.float32) - want).max() > 1e-2  # flip really changes the embedding
    # the defaults' files are untouched; a second call computes nothing
    assert {k: v for k, v in _mtimes(d).items() if k in DEFAULT_FILES - {"manifest.json"}} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert _embed(trained, flip=True).computed == []


def test_multiscale_equals_hand_computed_mean_of_each_scale(trained, tmp_path):
    import shutil

    from pipeline.config import run_dir
    from pipeline.data.images import read_image
    from pipeline.data.transforms import apply, build_transform
    from pipeline.retrieval.embeddings import load_split

    trained = dict(trained, cfg=dict(trained["cfg"], runs_dir=str(tmp_path)))  # a copy of the run: its own cache
    shutil.copytree(run_dir(dict(trained["cfg"], runs_dir=trained["cfg_path"].parent)), run_dir(trained["cfg"]),
                    ignore=shutil.ignore_patterns("embeddings"))
    _embed(trained)  # the plain embeddings, which the scales must change
    r = _embed(trained, scales=(0.75, 1.0, 1.25), gallery_scales=(0.5, 1.0))
    assert r.stems == {"gallery": "gallery.ms0.5-1", "val": "val.ms0.75-1-1.25", "test": "test.ms0.75-1-1.25"}
    cfg, model, size = trained["cfg"], trained["model"], trained["state"]["image_size"]
    for name, kind, sides in (("gallery", "test", (16, 32)), ("val", "val", (24, 32, 40)),
                              ("test", "test", (24, 32, 40))):  # 32 px x each scale, to a multiple of 8
        items = trained["items"][name][:3]
        each = []
        for side in sides:
            tfm = build_transform(kind, cfg, side)
            x = np.stack([apply(tfm, read_image(it.path), i) for i, it in enumerate(items)])  # sample i, seed i
            each.append(F.normalize(_e(model, x), dim=1))
        want = F.normalize(sum(each) / len(each), dim=1).numpy()
        got = load_split(r.dir, r.stems[name]).array[:3].astype(np.float32)
        assert size == 32 and np.abs(got - want).max() < 2e-3, name
        assert np.abs(load_split(r.dir, name).array[:3].astype(np.float32) - want).max() > 1e-2  # it changes them
    assert _embed(trained, scales=(0.75, 1.0, 1.25), gallery_scales=(0.5, 1.0)).computed == []
    assert _embed(trained, scales=(1.0,)).stems["val"] == "val"  # one scale of 1 is the plain embedding
    for flag, value, needle in (("--scales", "1,x", "--scales '1,x'"), ("--gallery-scales", "0,1", "gallery scales")):
        p = cli("embed", trained["cfg_path"], flag, value, *trained["overrides"])
        assert_one_line_error(p, needle, "0.75,1,1.25")


def test_red_crops_dropped():
    from pipeline.data.transforms import MultiCrop, crop_boxes, red_mask, select_crops

    img = np.full((100, 100, 3), 128, np.uint8)
    img[:60, :60] = (255, 0, 0)  # the top-left corner fully red

    def red_frac(y0, y1, x0, x1):  # overlap of the box with the red square, by hand
        return max(0, min(y1, 60) - y0) * max(0, min(x1, 60) - x0) / ((y1 - y0) * (x1 - x0))

    # 5 crops: 60-px corners + centre; only the top-left one (100% red) goes: the others are 33%, 33%, 0%, 44%
    assert crop_boxes(100, 100, 5) == [(0, 60, 0, 60), (0, 60, 40, 100), (40, 100, 0, 60), (40, 100, 40, 100),
                                       (20, 80, 20, 80)]
    kept, info = select_crops(img, 5)
    assert [k for _, _, k in info] == [False, True, True, True, True] and len(kept) == 4
    # 9 crops: 50-px grid at stride 25; (0,0) is 100% red, (0,1) and (1,0) 70%, the centre 49% (kept)
    boxes = crop_boxes(100, 100, 9)
    assert boxes == [(25 * i, 25 * i + 50, 25 * j, 25 * j + 50) for i in range(3) for j in range(3)]
    kept, info = select_crops(img, 9)
    assert [k for _, _, k in info] == [False, False, True, False, True, True, True, True, True]
    for box, frac, keep in info:
        assert frac == pytest.approx(red_frac(*box)) and keep == (red_frac(*box) <= 0.5)
    for crop, box in zip(kept, [b for b, _, k in info if k]):
        assert np.array_equal(crop, img[box[0]:box[1], box[2]:box[3]])
    # JPEG-perturbed red still counts; darker or orange-ish pixels do not
    px = np.array([[[255, 0, 0], [230, 40, 30], [200, 60, 60], [199, 0, 0], [255, 61, 0], [255, 0, 61]]], np.uint8)
    assert red_mask(px).tolist() == [[True, True, True, False, False, False]]
    # a non-square image: boxes scale with each side
    assert crop_boxes(50, 200, 5)[4] == (10, 40, 40, 160)
    # every crop red -> the whole image is the one view
    mc = MultiCrop("test", 9, 16)
    assert mc.views(np.full((40, 40, 3), (255, 0, 0), np.uint8), 0).shape == (1, 3, 16, 16)
    assert mc.views(img, 0).shape == (6, 3, 16, 16)


def _hand_multicrop(model, image, n, size, mean, std):
    """Mean of the unit embeddings of image's crops that are at most half red (or of the whole image)."""
    h, w = image.shape[:2]
    side, starts = (0.6, [(0, 0), (0, .4), (.4, 0), (.4, .4), (.2, .2)]) if n == 5 else \
        (0.5, [(.25 * i, .25 * j) for i in range(3) for j in range(3)])
    red = (image[..., 0] >= 200) & (image[..., 1] <= 60) & (image[..., 2] <= 60)
    crops = []
    for fy, fx in starts:
        y0, y1, x0, x1 = round(fy * h), round((fy + side) * h), round(fx * w), round((fx + side) * w)
        if red[y0:y1, x0:x1].mean() <= 0.5:
            crops.append(image[y0:y1, x0:x1])
    dropped = n - len(crops)
    crops = crops or [image]
    x = np.stack([((cv2.resize(np.ascontiguousarray(c), (size, size), interpolation=cv2.INTER_LINEAR) / 255.0
                    - np.array(mean)) / np.array(std)).transpose(2, 0, 1) for c in crops])
    return F.normalize(_e(model, x), dim=1).mean(0).numpy(), dropped


@pytest.mark.parametrize("n", [5, 9])
def test_multicrop_equals_hand_computed_mean_of_kept_crops(trained, n):
    from pipeline.data.images import read_image
    from pipeline.data.transforms import MaskPaste, mask_bank
    from pipeline.retrieval.embeddings import load_split

    _embed(trained)  # the defaults (cached already when this worker ran the tests above)
    r = _embed(trained, multicrop=n)
    assert r.stems == {"gallery": "gallery", "val": f"val.mc{n}", "test": f"test.mc{n}"}
    assert r.computed == [f"val.mc{n}", f"test.mc{n}"]  # the gallery is the default one, already cached
    st, model = trained["state"], trained["model"]
    size, mean, std = st["image_size"], st["mean"], st["std"]
    hole = A.Compose([MaskPaste(mask_bank(trained["cfg"]), 1.0)])  # the tiny data has train_masks/
    dropped_total = 0
    for name in ("test", "val"):
        loaded = load_split(r.dir, r.stems[name])
        got, ids = loaded.array, loaded.ids
        items = trained["items"][name]
        assert ids == [it.image_id for it in items]
        for i, it in enumerate(items if name == "test" else items[:4]):
            img = read_image(it.path)
            if name == "val":  # the val pipeline's real mask, seeded with the sample index, on the whole image
                hole.set_random_seed(i)
                img = hole(image=img)["image"]
                assert (img == (255, 0, 0)).all(-1).mean() > 0.05
            want, dropped = _hand_multicrop(model, img, n, size, mean, std)
            dropped_total += dropped
            assert np.abs(got[i].astype(np.float32) - want).max() < 2e-3, (name, i)
            assert np.linalg.norm(got[i].astype(np.float32)) <= 1 + 1e-2  # a mean of unit vectors
    assert dropped_total > 0  # the red occlusions of the tiny data do make some crops go
    assert _embed(trained, multicrop=n).computed == []


def test_each_variant_caches_separately_and_cli_flags(trained):
    from pipeline.data.images import read_image
    from pipeline.data.transforms import apply, build_transform
    from pipeline.retrieval.embeddings import load_split

    for kw in ({}, {"flip": True}, {"multicrop": 5}, {"multicrop": 9}):  # cached where this worker's earlier tests
        _embed(trained, **kw)                                              # made them; xdist may run this one alone
    r = _embed(trained, gallery_pipeline="val")
    assert r.stems == {"gallery": "gallery.galval", "val": "val", "test": "test"}
    assert r.computed == ["gallery.galval"]
    cfg, st, model, d = trained["cfg"], trained["state"], trained["model"], r.dir
    tfm = build_transform("val", cfg, st["image_size"])
    items = trained["items"]["gallery"][:3]
    x = np.stack([apply(tfm, read_image(it.path), i) for i, it in enumerate(items)])
    got = load_split(d, "gallery.galval").array
    assert np.abs(got[:3].astype(np.float32) - F.normalize(_e(model, x), dim=1).numpy()).max() < 2e-3
    combo = _embed(trained, flip=True, multicrop=9, gallery_pipeline="val")
    assert combo.computed == ["gallery.flip.galval", "val.flip.mc9", "test.flip.mc9"]
    manifest = json.loads((d / "manifest.json").read_text())
    stems = ["gallery", "val", "test", "gallery.flip", "val.flip", "test.flip", "val.mc5", "test.mc5", "val.mc9",
             "test.mc9", "gallery.galval", "gallery.flip.galval", "val.flip.mc9", "test.flip.mc9"]
    assert set(manifest) == set(stems) | {"centers"}
    assert len({manifest[s]["key"] for s in stems}) == len(stems)
    assert {p.name for p in d.iterdir()} == {f"{s}.{e}" for s in stems + ["centers"] for e in ("npy", "csv")} | {
        "manifest.json"}
    before = _mtimes(d)
    for kw in ({}, {"flip": True}, {"multicrop": 5}, {"multicrop": 9}, {"gallery_pipeline": "val"},
               {"flip": True, "multicrop": 9, "gallery_pipeline": "val"}):
        assert _embed(trained, **kw).computed == [], kw
    assert _mtimes(d) == before
    # the command line passes the flags through: only the new stems are computed
    p = cli("embed", trained["cfg_path"], "--flip", "--multicrop", "5", "--gallery-pipeline", "val",
            *trained["overrides"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("embedded") == 2 and "val.flip.mc5" in p.stdout and "test.flip.mc5" in p.stdout
    assert (d / "val.flip.mc5.npy").is_file() and _mtimes(d)["gallery.flip.galval.npy"] == before[
        "gallery.flip.galval.npy"]
    p = cli("embed", trained["cfg_path"], "--multicrop", "7", *trained["overrides"])
    assert_one_line_error(p, "multicrop 7", "0, 5, 9")


@pytest.mark.parametrize("kw, needles", [({"multicrop": 3}, ["multicrop 3", "0, 5, 9"]),
                                         ({"multicrop": "5"}, ["multicrop '5'"]),
                                         ({"gallery_pipeline": "train"}, ["gallery pipeline 'train'", "test, val"])])
def test_bad_variant_values_are_user_errors(kw, needles, tmp_path):
    from pipeline.config import load_config
    from pipeline.retrieval.embeddings import Variant, ensure_embeddings

    cfg = load_config("m1", [f"runs_dir={tmp_path}"])  # checked before anything else: no run needed
    with pytest.raises(UserError) as e:
        ensure_embeddings(cfg, Variant(**kw))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and all(n in msg for n in needles), msg


ON = {"flip": True, "multicrop": 5, "gallery_pipeline": "val", "fill": "blendflip", "rotation": 2, "upright": True,
      "scales": (0.75, 1.25), "gallery_scales": (0.5, 1.0)}


def test_variant_has_a_field_per_embedding_trick_in_stem_order():
    from dataclasses import fields

    from pipeline.retrieval.embedding_tricks import EMBEDDING_TRICKS
    from pipeline.retrieval.embeddings import Variant

    assert [f.name for f in fields(Variant)] == list(EMBEDDING_TRICKS) == list(ON)
    assert all(getattr(Variant(), k) == t.default for k, t in EMBEDDING_TRICKS.items())


@pytest.mark.parametrize("name", list(ON))
def test_each_embedding_trick_names_only_the_splits_it_applies_to(name):
    from pipeline.retrieval.embedding_tricks import EMBEDDING_TRICKS, SPLITS
    from pipeline.retrieval.embeddings import Variant

    trick, v = EMBEDDING_TRICKS[name], Variant(**{name: ON[name]}).checked()
    for split in SPLITS:
        if split in trick.splits:
            assert v.stem(split) == split + trick.stem(ON[name]) != split
            assert v.manifest(split)[trick.manifest] == ON[name]
        else:
            assert v.stem(split) == split and v.manifest(split) == {}
    if name in ("multicrop", "gallery_pipeline", "fill", "rotation", "scales", "gallery_scales"):
        with pytest.raises(UserError, match=f"{name.replace('_', ' ')} 'bogus'"):
            Variant(**{name: "bogus"}).checked()
