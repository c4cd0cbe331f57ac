"""pipeline.retrieval.rank must equal a brute-force float64 reference for any chunking, model count, class layout,
weights and per-class aggregation (max, or sum of the top agg_k)."""
import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.retrieval import knn as knn_mod
from pipeline.retrieval import rank as rank_mod
from pipeline.retrieval.rank import rank


def brute_force_rank(queries, gallery, labels, k=5, weights=None, agg="max", agg_k=3):
    """Full Q x N matrix in float64, per-class max (or sum of the agg_k largest), top-k by (-score, class code);
    pad with -1 / -inf."""
    qs = [queries] if isinstance(queries, np.ndarray) else list(queries)
    gs = [gallery] if isinstance(gallery, np.ndarray) else list(gallery)
    w = np.ones(len(qs)) if weights is None else np.asarray(weights, np.float64)
    S = sum(wm * (q.astype(np.float64) @ g.astype(np.float64).T) for wm, q, g in zip(w, qs, gs))
    classes = np.unique(labels)
    if agg == "max":
        per_class = np.stack([S[:, labels == c].max(1) for c in classes], 1)
    else:
        per_class = np.stack([-np.sort(-S[:, labels == c], 1)[:, :agg_k].sum(1) for c in classes], 1)
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


@pytest.fixture(params=["numpy", "onednn"])
def gemm(request, monkeypatch):
    """Run a test under each CPU matmul backend rank can pick (oneDNN is picked on AVX-512 CPUs)."""
    if request.param == "onednn":
        import torch

        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            pytest.skip("this torch build has no oneDNN linear op")
    monkeypatch.setattr(knn_mod, "_GEMM", request.param)
    return request.param


AGGS = [("max", 3), ("sum", 1), ("sum", 2), ("sum", 5)]  # (agg, agg_k); agg_k is ignored by "max"
BUDGETS = [1, 1_000, 20_000, 300_000, 2 << 30]


@pytest.mark.parametrize("agg,agg_k", AGGS)
@pytest.mark.parametrize("max_memory", BUDGETS)
@pytest.mark.parametrize("dims,weights", [([32], None), ([16, 24, 8], None), ([16, 24, 8], [0.5, 1.0, 2.0])])
def test_matches_brute_force(max_memory, dims, weights, agg, agg_k, gemm):
    rng = np.random.default_rng(len(dims) * 7 + max_memory % 97)
    qs, gs, labels = _data(rng, 23, 157, dims, 19, one_row_classes=4)
    want = brute_force_rank(qs, gs, labels, k=5, weights=weights, agg=agg, agg_k=agg_k)
    got = rank(qs, gs, labels, k=5, weights=weights, max_memory=max_memory, device="cpu", agg=agg, agg_k=agg_k)
    _assert_same(got, want)


@pytest.mark.parametrize("agg,agg_k", AGGS + [("sum", 40)])
def test_budget_never_changes_the_result(agg, agg_k, gemm):
    """The same classes for every chunking and scores equal up to fp32 rounding (BLAS rounds differently for
    different tile shapes); skewed class sizes (one class holds ~half the gallery, others one row) stress the sum
    mode's padding buckets, and agg_k=40 exceeds most classes' row counts."""
    rng = np.random.default_rng(21)
    qs, gs, labels = _data(rng, 30, 260, [24, 8], 25, one_row_classes=6)
    labels[rng.random(labels.size) < 0.5] = 7
    want = brute_force_rank(qs, gs, labels, k=6, weights=[1.5, 0.5], agg=agg, agg_k=agg_k)
    ref = None
    for mem in BUDGETS + [7_777, 60_000]:
        got = rank(qs, gs, labels, k=6, weights=[1.5, 0.5], max_memory=mem, device="cpu", agg=agg, agg_k=agg_k)
        _assert_same(got, want)
        if ref is None:
            ref = got
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_allclose(got[1], ref[1], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("max_memory", [1, 3_000, 2 << 30])
def test_sum_of_top_one_equals_max(max_memory):  # bit-identical: agg_k=1 runs the max engine
    rng = np.random.default_rng(3)
    qs, gs, labels = _data(rng, 19, 130, [16, 12], 17, one_row_classes=3)
    a = rank(qs, gs, labels, k=7, weights=[0.7, 1.3], max_memory=max_memory, device="cpu")
    b = rank(qs, gs, labels, k=7, weights=[0.7, 1.3], max_memory=max_memory, device="cpu", agg="sum", agg_k=1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("agg,agg_k", AGGS)
@pytest.mark.parametrize("C", [1, 3, 5])
def test_fewer_classes_than_k_pads(C, agg, agg_k):
    rng = np.random.default_rng(C)
    qs, gs, labels = _data(rng, 9, 40, [12], C)
    got = rank(qs[0], gs[0], labels, k=5, max_memory=5_000, device="cpu", agg=agg, agg_k=agg_k)
    _assert_same(got, brute_force_rank(qs, gs, labels, k=5, agg=agg, agg_k=agg_k))
    assert (got[0][:, C:] == -1).all() and np.isneginf(got[1][:, C:]).all()


@pytest.mark.parametrize("agg,agg_k", AGGS)
@pytest.mark.parametrize("class_sorted", [True, False])
def test_single_array_gallery_and_memmap(tmp_path, class_sorted, agg, agg_k, gemm):
    rng = np.random.default_rng(5)
    qs, gs, labels = _data(rng, 17, 90, [20], 11)
    # class-sorted: the slice (no gather) path; unsorted: the gather path
    order = np.argsort(labels, kind="stable") if class_sorted else rng.permutation(labels.size)
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=gs[0].shape)
    mm[:] = gs[0][order]
    mm.flush()
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    for ql in (qs[0], qs[0].astype(np.float16)):
        for mem in (1, 4_000, 1 << 20):
            got = rank(ql, mm, labels[order], k=3, max_memory=mem, device="cpu", agg=agg, agg_k=agg_k)
            _assert_same(got, brute_force_rank(ql, gs[0][order], labels[order], k=3, agg=agg, agg_k=agg_k))


def test_exact_ties_smaller_class_first(gemm):
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


def test_exact_ties_sum_smaller_class_first(gemm):
    D = 8
    eye = np.eye(D, dtype=np.float16)
    # class 5: e0 e1 e2, class 3: e0 e1, class 8: e2 e3 e0, class 2: e3, class 6: e1 e1 (a duplicated row)
    rows, labels = [0, 1, 2, 0, 1, 2, 3, 0, 3, 1, 1], [5, 5, 5, 3, 3, 8, 8, 8, 2, 6, 6]
    gallery, labels = eye[rows], np.array(labels)
    q = np.zeros((2, D), np.float32)
    q[0, :4] = [0.5, 0.5, 0.25, 0.25]  # top-2 sums: 5 -> 1.0, 3 -> 1.0, 6 -> 1.0, 8 -> 0.75, 2 -> 0.25
    q[1, [1, 3]] = [0.75, 0.25]        # 6 -> 1.5, then 3, 5 at 0.75, 8 at 0.25, 2 at 0.25
    for mem in (1, 200, 1 << 20):
        got = rank(q, gallery, labels, k=5, max_memory=mem, device="cpu", agg="sum", agg_k=2)
        _assert_same(got, brute_force_rank(q, gallery, labels, k=5, agg="sum", agg_k=2))
        assert got[0][0].tolist() == [3, 5, 6, 8, 2]
        assert got[0][1].tolist() == [6, 3, 5, 2, 8]
        np.testing.assert_array_equal(got[1][0], [1.0, 1.0, 1.0, 0.75, 0.25])


# oom_budget: small enough for several query chunks, big enough that 3 halvings don't reach 1 query x 1 row
@pytest.mark.parametrize("agg,agg_k,oom_budget", [("max", 3, 2_500), ("sum", 1, 2_500), ("sum", 3, 12_000)])
def test_torch_path_logic_on_cpu_and_oom_fallback(monkeypatch, agg, agg_k, oom_budget):
    """The CUDA code path, run on the CPU device (fp16-rounded queries, so a looser tolerance), and its
    out-of-memory handling: halve, then hand the remaining queries to the CPU path."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    qs, gs, labels = _data(rng, 21, 120, [16, 8], 13, one_row_classes=3)
    labels[40:70] = 2  # one long class run next to short ones
    want = brute_force_rank(qs, gs, labels, k=5, agg=agg, agg_k=agg_k)
    monkeypatch.setattr(rank_mod, "_torch_device", lambda d: torch.device("cpu"))
    for mem in (1, 3_000, 30_000, 1 << 30):
        got = rank(qs, gs, labels, k=5, max_memory=mem, log=lambda m: None, agg=agg, agg_k=agg_k)
        np.testing.assert_allclose(got[1], want[1], atol=2e-3)
        np.testing.assert_array_equal(got[0], want[0])  # no near-ties in this data

    chunks, lines = {"n": 0}, []
    real_mm, real_topk = rank_mod._mm, rank_mod.top_columns

    def counting_topk(*a):
        chunks["n"] += 1
        return real_topk(*a)

    def flaky_mm(q, g):
        if chunks["n"] >= 1:  # the first query chunk succeeds, then the "GPU" runs out of memory for good
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_mm(q, g)

    monkeypatch.setattr(rank_mod, "_mm", flaky_mm)
    monkeypatch.setattr(rank_mod, "top_columns", counting_topk)
    got = rank(qs, gs, labels, k=5, max_memory=oom_budget, log=lines.append, agg=agg, agg_k=agg_k)
    np.testing.assert_allclose(got[1], want[1], atol=2e-3)
    np.testing.assert_array_equal(got[0], want[0])
    assert sum("retrying" in ln for ln in lines) == rank_mod._OOM_HALVINGS
    assert "on the CPU" in lines[-1]
    done = int(lines[-1].split("ranking queries ")[1].split("..")[0])
    assert 0 < done < len(want[0])  # queries the "GPU" finished first; the CPU rest is exact to fp32
    _assert_same((got[0][done:], got[1][done:]), (want[0][done:], want[1][done:]))


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
    args = (np.zeros((2, 4), np.float32), np.zeros((3, 4), np.float16), np.array([0, 1, 2]))
    for bad, match in [(dict(agg="mean"), "agg must be 'max' or 'sum', got 'mean'"),
                       (dict(agg="sum", agg_k=0), "agg_k must be an integer >= 1.*got 0"),
                       (dict(agg="sum", agg_k=-2), "got -2"), (dict(agg="sum", agg_k=2.5), "got 2.5"),
                       (dict(agg="max", agg_k=0), "got 0"), (dict(agg="sum", agg_k=True), "got True")]:
        with pytest.raises(UserError, match=match) as e:
            rank(*args, device="cpu", **bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("agg,agg_k", [("max", 3), ("sum", 3), ("sum", 12)])
@pytest.mark.parametrize("dims", [[64], [32, 32]])
def test_extra_memory_stays_within_budget(dims, agg, agg_k, monkeypatch):
    """numpy reports its allocations to tracemalloc: the peak must stay near max_memory, far below Q x N floats
    (bookkeeping of O(N) and O(Q k) arrays is outside the budget). Run on the numpy matmul, whose score tile is a
    traced numpy buffer; oneDNN's output has the same tile shape but is torch memory, which tracemalloc misses."""
    import tracemalloc

    monkeypatch.setattr(knn_mod, "_GEMM", "numpy")
    rng = np.random.default_rng(2)
    Q, N = 400, 3000
    qs, gs, labels = _data(rng, Q, N, dims, 50)
    budget = 500_000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        rank(qs, gs, labels, k=5, max_memory=budget, device="cpu", agg=agg, agg_k=agg_k)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < budget + N * 40 + Q * 5 * 24 + 100_000 < Q * N * 4 / 4, peak
