"""Class scores from a classifier head's weights mixed with kNN (pipeline/inference/logits.py), against dense numpy
hand computations; the heads' class_centers() against their logits."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import UserError
from pipeline.inference.logits import logit_knn_rank
from pipeline.model.heads import HEADS, LossTransform
from pipeline.retrieval.centers import centers_from_checkpoint, load_centers, save_centers
from pipeline.retrieval.rank import rank


def _unit(rng, *shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def case():
    """2 models (8-d, 6-d; weights 0.7, 1.3), 60 gallery rows of 11 classes (codes 0..12 but 3 and 12), model 0 with
    K=3 sub-centers for codes 0..12 in shuffled order (3 and 12 have no gallery rows), model 1 with K=1 and no
    center for code 5 (so 5 is never returned)."""
    rng = np.random.default_rng(0)
    codes = rng.choice([c for c in range(12) if c != 3], 60)
    codes[:11] = [c for c in range(12) if c != 3]
    dims, Q = (8, 6), 23
    qs = [_unit(rng, Q, d).astype(np.float16) for d in dims]
    gs = [_unit(rng, 60, d).astype(np.float16) for d in dims]
    c0 = rng.permutation(13)
    c1 = np.array([c for c in range(13) if c != 5])
    centers = [_unit(rng, 13, 3, 8).astype(np.float32), _unit(rng, 12, 1, 6).astype(np.float16)]
    return qs, gs, codes, centers, [c0, c1], np.array([0.7, 1.3])


def _dense(qs, gs, codes, centers, ccodes, w, alpha, k, agg):
    """The mixed class scores by hand in float64: every query x every gallery row and every center."""
    Sg = sum(wm * q.astype(np.float64) @ g.astype(np.float64).T for wm, q, g in zip(w, qs, gs))
    Q, G = Sg.shape[0], 13
    knn = np.full((Q, G), -np.inf)
    for c in np.unique(codes):
        rows = np.sort(Sg[:, codes == c], axis=1)[:, ::-1]
        knn[:, c] = rows[:, 0] if agg == "max" else rows[:, :3].sum(1)
    logit = np.zeros((Q, G))
    has = np.ones(G, bool)
    for wm, q, c, cc in zip(w, qs, centers, ccodes):
        part = np.full((Q, G), -np.inf)
        part[:, cc] = np.einsum("qd,ckd->qck", q.astype(np.float64), c.astype(np.float64)).max(2)
        logit += wm * part
        has &= np.isin(np.arange(G), cc)
    S = np.where(has & np.isfinite(knn), alpha * np.where(np.isfinite(knn), knn, 0) + (1 - alpha) * logit, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(G), S.shape), -S), axis=1)[:, :k]
    vals = np.take_along_axis(S, order, 1)
    return np.where(np.isfinite(vals), order, -1), vals


@pytest.mark.parametrize("alpha,agg,k", [(0.0, "max", 5), (0.3, "max", 12), (0.3, "sum", 5), (1.0, "max", 5)])
def test_matches_dense_hand_computation_in_chunks(case, alpha, agg, k):
    qs, gs, codes, centers, ccodes, w = case
    # 11 gallery classes x 64 B a cell, half the budget here: 4 queries a chunk, 6 chunks for 23 queries
    got_c, got_s = logit_knn_rank(qs, gs, codes, centers, ccodes, alpha, k=k, weights=w, max_memory=11 * 64 * 8,
                                  agg=agg, device="cpu", log=lambda *_: None)
    if alpha == 1:  # plain kNN: the center rules do not apply, every gallery class may be returned
        want_c, want_s = rank(qs, gs, codes, k=k, weights=w, device="cpu")
    else:
        want_c, want_s = _dense(qs, gs, codes, centers, ccodes, w, alpha, k, agg)
    assert got_c.dtype == np.int64 and got_s.dtype == np.float32
    np.testing.assert_array_equal(got_c, want_c)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-5)
    assert not np.isin(got_c, [3, 5, 12]).any() or alpha == 1
    if k == 12:  # 10 classes can be returned: two padded
        assert (got_c[:, 10:] == -1).all() and np.isneginf(got_s[:, 10:]).all() and (got_c[:, :10] >= 0).all()


def test_alpha_one_is_rank_itself(case):
    qs, gs, codes, centers, ccodes, w = case
    got = logit_knn_rank(qs, gs, codes, centers, ccodes, 1, weights=w, agg="sum", device="cpu")
    want = rank(qs, gs, codes, weights=w, agg="sum", device="cpu")
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("alpha", [1.5, -0.1, float("nan"), True, "0.5", None])
def test_bad_alpha_is_one_line_user_error(case, alpha):
    qs, gs, codes, centers, ccodes, w = case
    with pytest.raises(UserError, match=r"alpha must be a number in \[0, 1\]") as e:
        logit_knn_rank(qs, gs, codes, centers, ccodes, alpha)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", [n for n in HEADS if hasattr(HEADS[n], "class_centers")])
def test_class_centers_reproduce_logits(name):
    torch.manual_seed(0)
    head = HEADS[name](16, 7, [5, 1, 2, 9, 3, 3, 4])
    e = torch.randn(10, 16)
    centers = head.class_centers()
    C, K, D = centers.shape
    assert centers.dtype == torch.float32 and (C, D) == (7, 16) and K == (3 if name == "subcenter_arcface" else 1)
    torch.testing.assert_close(centers.norm(dim=2), torch.ones(C, K))
    by_hand = (F.normalize(e) @ centers.reshape(C * K, D).T).view(10, C, K).amax(2)
    assert torch.equal(by_hand, head.logits(e))
    assert torch.equal(LossTransform(head, 2, 0.1).class_centers(), centers)


@pytest.mark.parametrize("name", ["supcon", "triplet"])
def test_pair_heads_have_no_centers(name):
    head = HEADS[name](16, 7)
    assert getattr(head, "class_centers", None) is None
    assert getattr(LossTransform(head, 2, 0.1), "class_centers", None) is None


def test_centers_from_checkpoints_round_trip(trained, tmp_path):
    from pipeline.core.checkpoint import load

    _, runs = trained
    for name, key in (("a", "weight"), ("b", "loss.W")):
        state = load(runs / name / "fold0" / "best.pt")
        got = centers_from_checkpoint(state)
        W = state["head"][key].float()
        W = W.T if key == "loss.W" else W  # pml's CosFace holds (D, C)
        assert got.labels == [str(c) for c in state["classes"]] and got.array.shape == (len(got.labels), 1, 32)
        np.testing.assert_allclose(got.array[:, 0], (W / W.norm(dim=1, keepdim=True)).numpy(), atol=1e-6)
        save_centers(tmp_path / f"{name}.abc123", got)
        back = load_centers(tmp_path / f"{name}.abc123")
        assert back.labels == got.labels and all(isinstance(x, str) for x in back.labels)
        np.testing.assert_array_equal(back.array, got.array)
    pair = {**state, "config": {**state["config"], "head": "supcon"}, "head": {}}
    assert centers_from_checkpoint(pair) is None
    with pytest.raises(UserError, match="class centers not found"):
        load_centers(tmp_path / "missing")
