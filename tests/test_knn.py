"""pipeline.retrieval.knn.nearest: exact against float64 brute force for any budget and GEMM, ties -> smaller row,
an fp16 memmap gallery cast block by block (never one fp32 copy), and faiss IndexFlatIP's neighbours on random data.
(Its exclude / leave-one-out cases are in test_evaluate.py.)"""
import numpy as np
import pytest

from pipeline.retrieval import knn
from pipeline.retrieval.knn import Plan, nearest


def _unit(rng, n, d, dtype=np.float16):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def _brute(q, g, k):
    S = q.astype(np.float64) @ g.astype(np.float64).T
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(S, idx, 1)


@pytest.mark.parametrize("gemm", ["numpy", "onednn"])
@pytest.mark.parametrize("max_memory", [1_500, 5_000, 60_000, 2 << 30])  # 1_500: one query x 5 rows a time
def test_equals_brute_force_for_any_budget(gemm, max_memory, tmp_path):
    rng = np.random.default_rng(max_memory % 101)
    q, g = _unit(rng, 29, 24, np.float32), _unit(rng, 300, 24)
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=g.shape)
    mm[:] = g
    mm.flush()
    want = _brute(q, g, 7)
    for gallery in (g, np.load(tmp_path / "g.npy", mmap_mode="r"), g.astype(np.float32)):
        for queries in (q, q.astype(np.float16)):
            got = nearest(queries, gallery, 7, max_memory=max_memory, backend=gemm)
            np.testing.assert_array_equal(got.indices, want[0])
            np.testing.assert_allclose(got.scores, want[1], atol=1e-5 if queries.dtype == np.float32 else 2e-3)
            assert got.indices.dtype == np.int64 and got.scores.dtype == np.float32


def test_ties_go_to_the_smaller_row():
    eye = np.eye(6, dtype=np.float16)
    g = eye[[2, 0, 1, 0, 2, 0, 1, 3]]  # e0 at rows 1, 3, 5; e1 at 2, 6; e2 at 0, 4
    q = np.zeros((3, 6), np.float32)
    q[0, 0] = 1.0                # rows 1, 3, 5 tie at 1, then the zeros in row order
    q[1, [1, 2]] = 0.5           # rows 0, 2, 4, 6 tie at 0.5
    q[2, 5] = 1.0                # every row scores 0
    for mem in (1, 300, 1 << 20):
        got = nearest(q, g, 5, max_memory=mem)
        assert got.indices.tolist() == [[1, 3, 5, 0, 2], [0, 2, 4, 6, 1], [0, 1, 2, 3, 4]]
        # excluding a tied row moves the next one up
        got = nearest(q, g, 3, max_memory=mem, exclude=np.array([3, -1, 0]))
        assert got.indices.tolist() == [[1, 5, 0], [0, 2, 4], [1, 2, 3]]


def test_faiss_backend_returns_the_same_neighbours():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    q, g = _unit(rng, 50, 32), _unit(rng, 700, 32)
    ours = nearest(q, g, 10)
    theirs = nearest(q, g, 10, backend="faiss")
    np.testing.assert_array_equal(theirs.indices, ours.indices)
    np.testing.assert_allclose(theirs.scores, ours.scores, atol=1e-5)
    with pytest.raises(ValueError, match="exclusion"):
        nearest(q, g, 10, backend="faiss", exclude=np.zeros(50, np.int64))


def test_gallery_is_cast_block_by_block(monkeypatch):
    """Peak traced memory (numpy GEMM, so the score tile is traced too) stays near the budget, far below one fp32
    copy of the gallery."""
    import tracemalloc

    monkeypatch.setattr(knn, "_GEMM", "numpy")
    rng = np.random.default_rng(3)
    q, g = _unit(rng, 200, 64), _unit(rng, 4000, 64)
    want = _brute(q, g, 5)[0]
    budget = 100_000
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = nearest(q, g, 5, max_memory=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got.indices, want)
    assert peak < budget + 200 * 5 * 12 + 50_000 < g.size * 4 / 4, peak


def test_small_and_bad_inputs():
    g = np.eye(4, dtype=np.float16)
    assert nearest(np.zeros((0, 4), np.float32), g, 3).indices.shape == (0, 3)
    assert nearest(g, g, 0).indices.shape == (4, 0)
    assert nearest(g, g, 9).indices.shape == (4, 4)
    assert nearest(g, g, 9, exclude=np.arange(4)).indices.shape == (4, 3)
    assert nearest(g, g, 9, exclude=np.full(4, -1)).indices.shape == (4, 4)  # nothing excluded
    for bad in (dict(exclude=np.arange(3)), dict(exclude=np.array([0, 1, 2, 4])), dict(backend="gpu")):
        with pytest.raises(ValueError):
            nearest(g, g, 2, **bad)
    with pytest.raises(ValueError, match="equal dims"):
        nearest(np.zeros((2, 3), np.float32), g, 2)


def test_plans_fit_their_budget():
    p = Plan.nearest(2 << 30, 100, 5000, 64, 10, cast_queries=True)
    assert (p.chunk, p.block, p.tile) == (100, 1024, 100)  # all queries at once; blocks capped at 1024 rows
    p = Plan.nearest(1, 100, 5000, 64, 10, cast_queries=True)
    assert (p.chunk, p.block, p.tile) == (1, 1, 1)
    assert Plan(8, 5, 3).halved() == Plan(4, 2, 1) and Plan(1, 1, 1).halved() == Plan(1, 1, 1)
