"""Approximate search (search: ivf | hnsw, pipeline/retrieval/search.py): its defaults find exact's classes on a
clustered gallery, exact stays exact, a bad key is one line naming it, and the config reaches the test ranking of
ensemble and evaluate's map@5."""
import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.retrieval.rank import rank
from pipeline.retrieval.search import Search, build_index

from conftest import tiny_overrides

pytest.importorskip("faiss")


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(tmp_path, rows=3000, classes=300, queries=200, dims=(32, 16)):
    """Two models' fp16 galleries (memmaps, as embed writes them) of `classes` clusters, their labels (class codes
    spread, not 0..C-1) and fp32 queries of random classes."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(rows) % classes)
    truth = rng.integers(0, classes, queries)
    gs, qs = [], []
    for m, d in enumerate(dims):
        centres = _unit(rng.standard_normal((classes, d)))
        np.save(tmp_path / f"g{m}.npy", _unit(centres[labels] + 0.8 * _unit(rng.standard_normal((rows, d))))
                .astype(np.float16))
        gs.append(np.load(tmp_path / f"g{m}.npy", mmap_mode="r"))
        qs.append(_unit(centres[truth] + 0.8 * _unit(rng.standard_normal((queries, d)))))
    return qs, gs, labels * 7 + 3


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_defaults_find_exacts_classes_with_exact_scores(tmp_path, kind):
    qs, gs, labels = _clustered(tmp_path)
    search = Search.of(load_config("default", [f"search={kind}"]))
    budget = 8 * 48 * 1600  # small: the gallery goes into the index in two chunks, the queries in three
    built = build_index(gs, [1.0, 0.5], search, budget)
    assert built.index.ntotal == len(labels)
    for agg in ("max", "sum"):
        kw = dict(k=5, weights=[1.0, 0.5], agg=agg, device="cpu", max_memory=budget)
        want_c, want_s = rank(qs, gs, labels, **kw)
        got_c, got_s = rank(qs, gs, labels, index=built, log=pytest.fail, **kw)
        recall = np.mean([len(set(g) & set(w)) / 5 for g, w in zip(got_c, want_c)])
        # agg="sum" adds a class's 3 best rows among the candidates only: its lower ranks are looser
        assert recall >= (0.99 if agg == "max" else 0.95) and (got_c[:, 0] == want_c[:, 0]).all(), recall
        same = got_c == want_c
        assert same.mean() > 0.9
        if agg == "max":  # a class ranked alike has exact's score (to fp32 rounding)
            assert np.abs(got_s[same] - want_s[same]).max() < 1e-5
        else:  # the sum of its best rows among the candidates: at most exact's (these scores are all positive)
            assert (got_s[same] <= want_s[same] + 1e-5).all() and np.isclose(got_s[same], want_s[same]).mean() > 0.9


def test_exact_is_the_default_and_unchanged_and_a_full_search_is_exact(tmp_path):
    qs, gs, labels = _clustered(tmp_path, rows=600, classes=60, queries=50)
    cfg = load_config("default")
    assert cfg["search"] == "exact" and Search.of(cfg) == Search()
    for agg in ("max", "sum"):
        plain = rank(qs, gs, labels, agg=agg, device="cpu")
        searched = rank(qs, gs, labels, agg=agg, device="cpu", search=Search.of(cfg), log=pytest.fail)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, searched))
    # every row a candidate (IVF: every list probed): exact's classes and scores
    want = rank(qs, gs, labels, device="cpu")
    got = rank(qs, gs, labels, device="cpu", search=Search("ivf", candidates=600, nprobe=10_000), log=print)
    assert (got[0] == want[0]).all() and np.abs(got[1] - want[1]).max() < 1e-5


@pytest.mark.parametrize("override, key", [("search=ivff", "'search'"), ("ivf.nprobe=0", "ivf.nprobe=0"),
                                           ("hnsw.M=1", "hnsw.M=1"), ("search_candidates=0", "search_candidates=0")])
def test_a_bad_search_key_is_one_line_naming_it(override, key):
    with pytest.raises(UserError) as e:
        Search.of(load_config("default", [override]))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_config_reaches_ensembles_test_ranking_and_evaluate(trained, tmp_path, monkeypatch):
    from pipeline.experiments.ensemble import ensemble
    from pipeline.experiments.evaluate import evaluate_runs

    monkeypatch.chdir(tmp_path)  # ensemble writes submissions/ here
    submissions, scores = {}, {}
    for kind in ("exact", "hnsw", "ivf"):
        cfgs = [load_config(str(trained[1] / f"{n}.yaml"), tiny_overrides(*trained, "epochs=1", f"search={kind}"))
                for n in ("a", "b")]
        logs = []
        report = ensemble(cfgs, out_name=f"ann-{kind}", log=logs.append)
        ranked = [m for m in logs if m.startswith("rank: search=")]
        # one approximate ranking: the test images' (validation scores stay exact)
        assert ranked == [] if kind == "exact" else len(ranked) == 1 and f"search={kind}" in ranked[0], logs
        submissions[kind] = (tmp_path / report["submission"]).read_text()
        logs = []
        scores[kind] = evaluate_runs(cfgs[:1], ["map@5"], [5], log=logs.append)[0]["map@5"]
        assert any(m.startswith(f"rank: search={kind}") for m in logs) == (kind != "exact"), logs
    with pytest.raises(UserError, match="config key 'search'"):  # checked before any embedding is loaded
        ensemble([dict(cfgs[0], search="flat")], out_name="ann-bad")
    # a tiny gallery: every row is a candidate, so the approximate rankings are exact's
    assert submissions["hnsw"] == submissions["exact"] == submissions["ivf"]
    assert scores["hnsw"] == scores["exact"] == scores["ivf"]
