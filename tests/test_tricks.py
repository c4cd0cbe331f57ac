"""pipeline.inference.reranking.rank_with_tricks must equal an independent brute-force float64 reference (dense
matrices, explicit loops and sorts, ties -> smaller class code / row index) for every trick, combination and
memory budget."""

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.inference import reranking
from pipeline.retrieval.rank import rank


# ---------------------------------------------------------------- reference (float64, dense, loops)
def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_combine(qs, gs, weights, normalise=True):
    """normalise: weights to sum 1 (what predict does once a trick is on; all off it is rank's raw weights)."""
    w = np.ones(len(qs)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum() if normalise else w
    cat = lambda arrs: np.concatenate([np.sqrt(wm) * a.astype(np.float64) for wm, a in zip(w, arrs)], 1)
    return cat(qs), cat(gs)


def ref_pca(G, Q, dim, whiten):
    mean = G.mean(0)
    _, s, Vt = np.linalg.svd(G - mean, full_matrices=False)
    P = Vt[:dim].T
    if whiten:
        P = P / np.sqrt(s[:dim] ** 2 / (G.shape[0] - 1) + 1e-12)
    return _unit((G - mean) @ P), _unit((Q - mean) @ P)


def ref_dba(G, codes, k, alpha):
    out = np.empty_like(G)
    for i in range(len(G)):
        others = [j for j in range(len(G)) if j != i and codes[j] == codes[i]]
        others = sorted(others, key=lambda j: (-(G[i] @ G[j]), j))[:k - 1]
        v = G[i].copy()
        for j in others:
            v += max(G[i] @ G[j], 0.0) ** alpha * G[j]
        out[i] = v / np.linalg.norm(v)
    return out


def ref_qe(Q, G, codes, k, alpha, top1):
    out = np.empty_like(Q)
    for i in range(len(Q)):
        rows = sorted([j for j in range(len(G)) if codes[j] == top1[i]], key=lambda j: (-(Q[i] @ G[j]), j))[:k]
        v = Q[i].copy()
        for j in rows:
            v += max(Q[i] @ G[j], 0.0) ** alpha * G[j]
        out[i] = v / np.linalg.norm(v)
    return out


def ref_rank(Q, G, codes, k, agg="max", agg_k=3):
    S = Q @ G.T
    classes = sorted(set(codes.tolist()))
    top_c, top_s = np.full((len(Q), k), -1), np.full((len(Q), k), -np.inf)
    for i in range(len(Q)):
        score = {}
        for c in classes:
            sims = sorted((S[i, j] for j in range(len(G)) if codes[j] == c), reverse=True)
            score[c] = sims[0] if agg == "max" else sum(sims[:agg_k])
        best = sorted(classes, key=lambda c: (-score[c], c))[:k]
        top_c[i, :len(best)] = best
        top_s[i, :len(best)] = [score[c] for c in best]
    return top_c, top_s


def ref_predict(qs, gs, codes, k=5, weights=None, pca_dim=0, whiten=False, dba=(0, 3.0), qe=(0, 3.0), agg="max",
                agg_k=3):
    Q, G = ref_combine(qs, gs, weights, normalise=bool(pca_dim or dba[0] or qe[0]))
    if pca_dim:
        G, Q = ref_pca(G, Q, pca_dim, whiten)
    if dba[0]:
        G = ref_dba(G, codes, *dba)
    if qe[0]:
        first, _ = ref_rank(Q, G, codes, 1, agg, agg_k)
        Q = ref_qe(Q, G, codes, *qe, first[:, 0])
    return ref_rank(Q, G, codes, k, agg, agg_k)


# ---------------------------------------------------------------- data
def _data(seed=0, Q=20, N=60, dims=(8, 16), C=12):
    """Float16 unit rows like the real pipeline; queries are noisy copies of gallery rows so classes matter."""
    rng = np.random.default_rng(seed)
    codes = np.concatenate([np.arange(C), rng.integers(0, C, N - C)])  # every class has a row
    gs, qs = [], []
    src = rng.integers(0, N, Q)
    for d in dims:
        g = _unit(rng.standard_normal((C, d))[codes] + 0.8 * rng.standard_normal((N, d)))
        gs.append(g.astype(np.float16))
        qs.append(_unit(g[src] + 0.7 * rng.standard_normal((Q, d))).astype(np.float16))
    return qs, gs, codes


def _same(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=2e-4)


CASES = {
    "weights": dict(weights=[0.3, 1.7]),
    "pca": dict(pca_dim=10),
    "pca_whiten": dict(pca_dim=10, whiten=True),
    "pca_full_whiten": dict(pca_dim=24, whiten=True, weights=[2.0, 1.0]),
    "dba": dict(dba=(5, 3.0)),
    "dba_alpha0": dict(dba=(3, 0.0)),
    "dba_k1": dict(dba=(1, 3.0)),
    "qe": dict(qe=(2, 3.0)),
    "qe_big_k": dict(qe=(50, 1.0)),
    "dba_qe": dict(dba=(5, 3.0), qe=(3, 3.0), weights=[1.0, 0.5]),
    "pca_dba_qe": dict(pca_dim=16, whiten=True, dba=(4, 2.0), qe=(2, 3.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_predict_matches_reference(name, seed):
    qs, gs, codes = _data(seed)
    kw = CASES[name]
    _same(reranking.rank_with_tricks(qs, gs, codes, k=5, device="cpu", **kw), ref_predict(qs, gs, codes, k=5, **kw))


@pytest.mark.parametrize("name", ["pca_dba_qe", "dba_qe", "pca_whiten"])
@pytest.mark.parametrize("budget", [1, 700, 5000])
def test_tiny_budgets_identical(name, budget):
    qs, gs, codes = _data(3)
    want = reranking.rank_with_tricks(qs, gs, codes, device="cpu", **CASES[name])
    got = reranking.rank_with_tricks(qs, gs, codes, device="cpu", max_memory=budget, **CASES[name])
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(dba=(5, 3.0), qe=(2, 3.0)), dict(pca_dim=12, qe=(3, 3.0))])
def test_agg_sum_matches_reference(kw):
    qs, gs, codes = _data(4)
    _same(reranking.rank_with_tricks(qs, gs, codes, agg="sum", agg_k=3, device="cpu", **kw),
          ref_predict(qs, gs, codes, agg="sum", agg_k=3, **kw))


def test_all_off_is_rank_exactly():
    qs, gs, codes = _data(5)
    for w in (None, [0.25, 2.0]):
        got = reranking.rank_with_tricks(qs, gs, codes, k=7, weights=w, device="cpu", max_memory=4096)
        want = rank(qs, gs, codes, k=7, weights=w, device="cpu", max_memory=4096)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("N,full", [(60, 24), (10, 9)])  # 24 dims < rows; 10 rows span 9 centred dims < 24
def test_full_rank_pca_preserves_centred_ranking(N, full):
    qs, gs, codes = _data(6, N=N, C=min(12, N))
    Q, G = ref_combine(qs, gs, None)
    mean = G.mean(0)
    want = ref_rank(_unit(Q - mean), _unit(G - mean), codes, 5)
    got = reranking.rank_with_tricks(qs, gs, codes, pca_dim=full, device="cpu")
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(UserError, match=f"dim {full + 1} .*<= {full}"):
        reranking.rank_with_tricks(qs, gs, codes, pca_dim=full + 1, device="cpu")


def test_combine_dot_is_weighted_cosine_sum():
    qs, gs, _ = _data(7)
    q, g = reranking.combine(qs, gs, [0.5, 3.0])
    want = sum(w * (a.astype(np.float64) @ b.astype(np.float64).T) for w, a, b in zip([0.5, 3.0], qs, gs))
    np.testing.assert_allclose(q @ g.T, want, atol=1e-5)
    assert q.dtype == g.dtype == np.float32 and q.shape == (20, 24)


def test_trick_functions_direct():
    qs, gs, codes = _data(8)
    Q, G = ref_combine(qs, gs, None)
    Gp, Qp = reranking.pca(G.astype(np.float32), Q.astype(np.float32), 12, whiten=True, max_memory=100)
    rG, rQ = ref_pca(G, Q, 12, True)
    np.testing.assert_allclose(Qp @ Gp.T, rQ @ rG.T, atol=1e-5)  # eigenvector signs cancel in the products
    D = reranking.dba(G.astype(np.float32), codes, 5, 3.0, max_memory=1)
    np.testing.assert_allclose(D, ref_dba(G, codes, 5, 3.0), atol=1e-5)
    top1 = np.array([codes[i % len(codes)] for i in range(len(Q))])
    top1[0] = -1  # no prediction: only normalised
    E = reranking.qe(Q.astype(np.float32), G.astype(np.float32), codes, 3, 2.0, top1[:, None], max_memory=1)
    want = ref_qe(Q, G, codes, 3, 2.0, top1)
    want[0] = _unit(Q[:1])[0]
    np.testing.assert_allclose(E, want, atol=1e-5)


@pytest.mark.parametrize("kw,needle", [
    (dict(pca_dim=25), "pca: dim 25"), (dict(pca_dim=-1), "pca_dim"), (dict(pca_dim=2.5), "pca_dim"),
    (dict(dba=(-1, 3.0)), "dba: k"), (dict(dba=(5, -1.0)), "dba: alpha"), (dict(dba=5), "dba must be"),
    (dict(qe=(-2, 3.0)), "qe: k"), (dict(qe=(2, -0.5)), "qe: alpha"), (dict(qe=(2, float("nan"))), "qe: alpha"),
    (dict(weights=[1.0, -1.0], dba=(2, 1.0)), "weights"), (dict(weights=[1.0], qe=(2, 1.0)), "weights"),
])
def test_bad_inputs(kw, needle):
    qs, gs, codes = _data(9)
    with pytest.raises(UserError, match=needle) as e:
        reranking.rank_with_tricks(qs, gs, codes, device="cpu", **kw)
    assert "\n" not in str(e.value)


def test_bad_inputs_direct():
    qs, gs, codes = _data(9)
    q, g = reranking.combine(qs, gs)
    with pytest.raises(UserError, match="dim 30"):
        reranking.pca(g, q, 30)
    with pytest.raises(UserError, match="k must"):
        reranking.dba(g, codes, -1, 3.0)
    with pytest.raises(UserError, match="alpha must"):
        reranking.qe(q, g, codes, 2, -1.0, np.zeros(len(q), np.int64))
    with pytest.raises(UserError, match="codes"):
        reranking.dba(g, codes[:-1], 2, 3.0)
