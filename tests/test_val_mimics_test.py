"""Validation that predicts the test (issue 27 part 5): validation's synthetic occlusion is the test's pure-red
rectangle over 10-40% of the photo (deterministic per seed), the train_masks bank gives the same shares, the hotel
weighting of val MAP@5 recovers a per-hotel test score from a stratified fold, and the demo report states val,
test and their gap per model and for the ensemble. No training: seconds."""
from collections import Counter

import numpy as np
import pytest

from pipeline.config import CONFIG_DIR, _read_yaml
from pipeline.core.errors import UserError
from pipeline.data import transforms as T
from pipeline.data.folds import assign_folds
from pipeline.data.layouts import Item
from pipeline.experiments.demo import goals, report_table, scores
from pipeline.retrieval.metrics import map_at_k
from pipeline.training import validation

SEEDS = 300


def _cfg(data, **kw):
    return {**_read_yaml(CONFIG_DIR / "default.yaml"), "data": str(data), **kw}


def _red_shares(tfm, image):
    """Per seed the share of the output that is pure red; asserts the red is one filled rectangle."""
    shares = []
    for seed in range(SEEDS):
        red = (T.apply(tfm, image, seed).transpose(1, 2, 0) == T.RED).all(-1)
        ys, xs = np.nonzero(red)
        assert red[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all(), seed  # one filled rectangle, pure red
        shares.append(red.mean())
    return np.array(shares)


def test_val_hole_is_the_tests_red_rectangle(tmp_path):
    # tmp_path as data: no train_masks, so validation draws its synthetic hole; the photo has no red of its own
    image = np.random.default_rng(0).integers(0, 200, (120, 160, 3), dtype=np.uint8)
    tfm = T.build_transform("val", _cfg(tmp_path), 128)
    shares = _red_shares(tfm, image)
    assert shares.min() >= 0.1 * 0.97 and shares.max() <= 0.4 * 1.03  # 10-40%, to the pixel's rounding at 128 px
    assert abs(shares.mean() - 0.25) < 0.02  # uniform in the share, as make-data's test photos
    assert 0.12 < (shares < 0.15).mean() < 0.22 and 0.12 < (shares > 0.35).mean() < 0.22
    again = [T.apply(tfm, image, s) for s in (0, 1)]
    assert (again[0] == T.apply(tfm, image, 0)).all() and not (again[0] == again[1]).all()  # deterministic per seed
    # SPEC 2's H/4-H/2 hole (val_hole_area: []) covers 6-25%: the smaller hole that flattered validation
    spec = _red_shares(T.build_transform("val", _cfg(tmp_path, val_hole_area=[]), 128), image)
    assert spec.mean() < 0.16 and spec.max() <= 0.25


def test_train_masks_give_val_the_tests_shares(tiny_data):
    # make-data's masks carry the same 10-40% rectangle as its test photos; pasted before a resize to the photo's
    # own size (an identity), so the shares are the photo's
    image = np.random.default_rng(1).integers(0, 200, (96, 96, 3), dtype=np.uint8)
    tfm = T.build_transform("val", _cfg(tiny_data / "data"), 96)
    assert isinstance(tfm.transforms[0], T.MaskPaste)
    shares = _red_shares(tfm, image)
    assert shares.min() >= 0.09 and shares.max() <= 0.41 and abs(shares.mean() - 0.25) < 0.03


@pytest.mark.parametrize("area", [[0.4, 0.1], [0.1], [0, 0.3], [0.2, 1.0], ["a", "b"]])
def test_a_bad_val_hole_area_is_one_line(tmp_path, area):
    with pytest.raises(UserError) as e:
        T.build_transform("val", _cfg(tmp_path, val_hole_area=area), 32)
    assert str(e.value).startswith(f"val_hole_area={area!r}: give [low, high]") and "\n" not in str(e.value)


def test_hotel_weights_by_hand():
    # gallery images per hotel: a 4, b 1, c 4, d 1, e 4; queries: two of a, one of b, one of c
    gallery = ["a"] * 4 + ["b"] + ["c"] * 4 + ["d"] + ["e"] * 4
    queries = ["a", "a", "b", "c"]
    w = validation.query_weights("hotels", queries, gallery)
    # size 4: three hotels (a, c, e), three queries -> 1 each; size 1: two hotels (b, d), one query -> 2; mean 1
    assert w == pytest.approx(np.array([1, 1, 2, 1]) * 4 / 5)
    assert validation.query_weights("images", queries, gallery) == pytest.approx(np.ones(4))
    preds = [["a"], ["x", "a"], ["x"], ["c"]]
    assert validation.weighted_map5(preds, queries, w) == pytest.approx((1 + 0.5 + 0 + 1) / 5)
    assert validation.weighted_map5(preds, queries, np.ones(4)) == pytest.approx(map_at_k(preds, queries))


def test_hotel_weights_turn_a_stratified_fold_into_the_tests_per_hotel_score():
    # 300 hotels of 2-30 photos, the fold's photos never trained on; a photo is found with probability t / (t + 4)
    # when the model trained on t photos of its hotel. The test asks one photo per hotel; a stratified fold asks in
    # proportion to a hotel's photos
    rng = np.random.default_rng(5)
    sizes = 2 + np.minimum(rng.geometric(1 / 7, 300) - 1, 28)
    items = [Item(f"{h}/{i}", "", str(h)) for h, n in enumerate(sizes) for i in range(n)]
    folds = assign_folds(items, 10, seed=1)
    val = [it.label for it in items if folds[it.image_id] == 0]
    gallery = [it.label for it in items if folds[it.image_id] != 0]
    trained = Counter(gallery)
    found = lambda t: t / (t + 4)  # noqa: E731
    test = np.mean([found(trained[str(h)]) for h in range(len(sizes))])
    ap = np.array([found(trained[y]) for y in val])
    weighted = ap @ validation.query_weights("hotels", val, gallery) / len(val)
    assert ap.mean() - test > 0.05  # big hotels dominate the fold: validation over-predicts
    assert abs(weighted - test) < 0.002


def test_bad_val_weights_is_one_line():
    cfg = {**_read_yaml(CONFIG_DIR / "default.yaml"), "val_weights": "classes"}
    with pytest.raises(UserError, match=r"^val_weights='classes': use hotels .* or images \(each validation query "
                                        r"counts once\)$"):
        validation.check(cfg)


def test_demo_report_states_val_test_and_their_gap_per_model_and_ensemble():
    models = [{"name": "m1", **scores({"val_map5": 0.6, "val_map5_balanced": 0.55, "test_map5": 0.45}, 0.47),
               "train_seconds": 10.0},
              {"name": "m2", **scores({"val_map5": 0.5, "val_map5_balanced": 0.45, "test_map5": 0.40}, 0.43),
               "train_seconds": 12.0}]
    report = {"models": models, "ensemble": scores({"val_map5": 0.7, "val_map5_balanced": 0.66, "test_map5": 0.62},
                                                   0.60),
              "baseline_random_init": {"val_map5": 0.05}, "val_weights": "hotels"}
    table = report_table(report, "lite0")
    assert list(table.columns[:6]) == ["model", "val MAP@5 (hotels)", "val each query", "val class-balanced",
                                       "test MAP@5", "test - val"]
    rows = table.set_index("model")
    assert rows.loc["m1", "test - val"] == "-0.0200" and rows.loc["m2", "test - val"] == "-0.0300"
    assert rows.loc["ensemble", "test - val"] == "+0.0200"
    assert rows.loc["ensemble", "test - val each query"] == "-0.0800"
    g = goals(report)
    assert g["abs_val_test_gap"] == pytest.approx(0.02) and g["abs_val_test_gap_plain"] == pytest.approx(0.08)
    assert g["max_model_gap"] == pytest.approx(0.03) and g["met"]["gap_0.05"] and g["met"]["model_gap_0.06"]
    assert report["ensemble"]["nearer_test"] == "weighted"
