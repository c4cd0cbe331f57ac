"""pipeline.rank must equal a brute-force float64 reference for any chunking, model count, class layout, weights."""
import numpy as np
import pytest

from pipeline import rank as rank_mod
from pipeline.errors import UserError
from pipeline.rank import rank


def brute_force_rank(queries, gallery, labels, k=5, weights=None):
    """Full Q x N matrix in float64, per-class max, top-k by (-score, class code); pad with -1 / -inf."""
    qs = [queries] if isinstance(queries, np.ndarray) else list(queries)
    gs = [gallery] if isinstance(gallery, np.ndarray) else list(gallery)
    w = np.ones(len(qs)) if weights is None else np.asarray(weights, np.float64)
    S = sum(wm * (q.astype(np.float64) @ g.astype(np.float64).T) for wm, q, g in zip(w, qs, gs))
    classes = np.unique(labels)
    per_class = np.stack([S[:, labels == c].max(1) for c in classes], 1)
    top_c = np.full((S.shape[0], k), -1, np.int64)
    top_s = np.full((S.shape[0], k), -np.inf)
    for i, row in enumerate(per_class):
        order = sorted(range(len(classes)), key=lambda j: (-row[j], classes[j]))[:k]
        top_c[i, :len(order)] = classes[order]
        top_s[i, :len(order)] = row[order]
    return top_c, top_s


def _data(rng, Q, N, dims, C, one_row_classes=0):
    def unit(n, d):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    qs = [unit(Q, d) for d in dims]
    gs = [unit(N, d).astype(np.float16) for d in dims]
    labels = rng.integers(0, C, N)
    labels[:one_row_classes] = C + np.arange(one_row_classes) * 3  # sparse codes, one gallery row each
    return qs, gs, labels


def _assert_same(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5, rtol=0)
    assert got[0].dtype == np.int64 and got[1].dtype == np.float32


@pytest.mark.parametrize("max_memory", [1, 20_000, 300_000, 2 << 30])
@pytest.mark.parametrize("dims,weights", [([32], None), ([16, 24, 8], None), ([16, 24, 8], [0.5, 1.0, 2.0])])
def test_matches_brute_force(max_memory, dims, weights):
    rng = np.random.default_rng(len(dims) * 7 + max_memory % 97)
    qs, gs, labels = _data(rng, 23, 157, dims, 19, one_row_classes=4)
    want = brute_force_rank(qs, gs, labels, k=5, weights=weights)
    got = rank(qs, gs, labels, k=5, weights=weights, max_memory=max_memory, device="cpu")
    _assert_same(got, want)


@pytest.mark.parametrize("C", [1, 3, 5])
def test_fewer_classes_than_k_pads(C):
    rng = np.random.default_rng(C)
    qs, gs, labels = _data(rng, 9, 40, [12], C)
    got = rank(qs[0], gs[0], labels, k=5, max_memory=5_000, device="cpu")
    _assert_same(got, brute_force_rank(qs, gs, labels, k=5))
    assert (got[0][:, C:] == -1).all() and np.isneginf(got[1][:, C:]).all()


def test_single_array_sorted_gallery_and_memmap(tmp_path):
    rng = np.random.default_rng(5)
    qs, gs, labels = _data(rng, 17, 90, [20], 11)
    order = np.argsort(labels, kind="stable")  # already class-sorted: the slice (no gather) path
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=gs[0].shape)
    mm[:] = gs[0][order]
    mm.flush()
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    for ql in (qs[0], qs[0].astype(np.float16)):
        got = rank(ql, mm, labels[order], k=3, max_memory=4_000, device="cpu")
        _assert_same(got, brute_force_rank(ql, gs[0][order], labels[order], k=3))


def test_exact_ties_smaller_class_first():
    # one-hot vectors make every dot product exact, so ties are real ties in fp32 too
    D = 8
    eye = np.eye(D, dtype=np.float16)
    gallery = np.concatenate([eye[[0, 1, 2]], eye[[0, 1, 2]], eye[[3]]])
    labels = np.array([9, 4, 7, 2, 6, 8, 1])  # classes 9 & 2 share e0, 4 & 6 share e1, 7 & 8 share e2
    q = np.zeros((3, D), np.float32)
    q[0, :3] = 0.5  # six classes tie at 0.5 -> 2, 4, 6, 7, 8
    q[1, 3] = 1.0   # class 1 wins, then a zero-score tie among the rest in code order
    q[2, [0, 2]] = [0.25, 0.75]
    for mem in (1, 200, 1 << 20):
        got = rank(q, gallery, labels, k=5, max_memory=mem, device="cpu")
        want = brute_force_rank(q, gallery, labels, k=5)
        _assert_same(got, want)
    assert got[0][0].tolist() == [2, 4, 6, 7, 8]
    assert got[0][1].tolist() == [1, 2, 4, 6, 7]
    assert got[0][2].tolist() == [7, 8, 2, 9, 1]


def test_torch_path_logic_on_cpu_and_oom_fallback(monkeypatch):
    """The CUDA code path, run on the CPU device (fp16-rounded queries, so a looser tolerance), and its
    out-of-memory handling: halve, then hand the remaining queries to the CPU path."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    qs, gs, labels = _data(rng, 21, 120, [16, 8], 13)
    want = brute_force_rank(qs, gs, labels, k=5)
    monkeypatch.setattr(rank_mod, "_pick_device", lambda d: torch.device("cpu"))
    got = rank(qs, gs, labels, k=5, max_memory=30_000, log=lambda m: None)
    np.testing.assert_allclose(got[1], want[1], atol=2e-3)

    calls, lines = {"n": 0}, []
    real_mm = rank_mod._mm

    def flaky_mm(q, g):
        calls["n"] += 1
        if calls["n"] > 3:  # a few tiles succeed, then the "GPU" runs out of memory for good
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_mm(q, g)

    monkeypatch.setattr(rank_mod, "_mm", flaky_mm)
    got = rank(qs, gs, labels, k=5, max_memory=30_000, log=lines.append)
    np.testing.assert_allclose(got[1], want[1], atol=2e-3)
    assert sum("retrying" in ln for ln in lines) == rank_mod._OOM_HALVINGS
    assert "on the CPU" in lines[-1]


def test_empty_and_bad_inputs():
    q = np.zeros((0, 4), np.float32)
    c, s = rank(q, np.zeros((3, 4), np.float16), np.array([0, 1, 2]), device="cpu")
    assert c.shape == (0, 5) and s.shape == (0, 5)
    with pytest.raises(UserError, match="equal dims"):
        rank(np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float16), np.array([0, 1, 2]), device="cpu")
    with pytest.raises(UserError, match="gallery rows"):
        rank(np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float16), np.array([0, 1]), device="cpu")
    with pytest.raises(UserError, match="weight"):
        rank([np.zeros((2, 4), np.float32)], [np.zeros((3, 4), np.float16)], np.array([0, 1, 2]),
             weights=[1, 2], device="cpu")


@pytest.mark.parametrize("dims", [[64], [32, 32]])
def test_extra_memory_stays_within_budget(dims):
    """numpy reports its allocations to tracemalloc: the peak must stay near max_memory, far below Q x N floats
    (bookkeeping of O(N) and O(Q k) arrays is outside the budget)."""
    import tracemalloc

    rng = np.random.default_rng(2)
    Q, N = 400, 3000
    qs, gs, labels = _data(rng, Q, N, dims, 50)
    budget = 500_000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        rank(qs, gs, labels, k=5, max_memory=budget, device="cpu")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < budget + N * 40 + Q * 5 * 24 + 100_000 < Q * N * 4 / 4, peak
