"""rank()'s modes beside its exact per-class max over every gallery row (retrieval/rank.py):

  agg="sum"            the sum of each class's agg_k = K largest row scores: the padded per-class layout of a
                       gallery block, the CPU fold of one class-sorted block into the running top-K, the final sums;
  search="ivf"|"hnsw"  approximate search, for galleries beyond exact search: a faiss index (IndexIVFFlat or
                       IndexHNSWFlat, inner product) finds each query's `candidates` best gallery rows, and the
                       classes are ranked on those alone as rank() ranks them all.

The index holds an ensemble as one space: the concatenation of each model's rows, model m's scaled by sqrt(w_m),
so its inner product with the queries (scaled alike) is rank's score sum_m w_m <q_m, g_m>. Both indexes are flat
(they keep an fp32 copy of every row), so a candidate's score is exact: the fp32 inner product rank() computes, to
rounding; nothing is rescored. The gallery is added in chunks cast from its fp16 arrays (memmaps); the index itself
(rows x dims x 4 B, plus HNSW's graph, ~8 M B a row) is outside max_memory, as nearest(backend="faiss") is. A class
none of whose rows is among a query's candidates cannot be ranked (bench/ann.py measures how often that changes the
top 5); with agg="sum" a class sums its K best rows among the candidates. faiss runs on the CPU whatever rank's
device."""
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pipeline.core.errors import UserError
from pipeline.retrieval.knn import top_columns

SEARCHES = ("exact", "ivf", "hnsw")
_ADD_ROWS = 65536  # gallery rows cast and added to an index at a time (fewer when max_memory asks)
_TRAIN_PER_LIST = 40  # IVF k-means sample: rows per list (faiss warns below 39)
# IVF k-means iterations (faiss: 25): 10 halved the training time at the same recall (bench/ann.py, docs/benchmarks.md)
_KMEANS_ITERATIONS = 10


@dataclass(frozen=True)
class Search:
    """How rank() meets the gallery: kind "exact" (every row) or an approximate faiss index ("ivf", "hnsw") and
    its parameters: the config keys search, search_candidates, ivf.* and hnsw.* (pipeline/configs/default.yaml)."""
    kind: str = "exact"
    candidates: int = 100
    nlist: int = 0
    nprobe: int = 128
    M: int = 32
    ef_search: int = 256
    ef_construction: int = 40

    @classmethod
    def of(cls, cfg: dict) -> "Search":
        """The config's search, checked: a bad value is a UserError naming its key."""
        kind, ivf, hnsw = cfg["search"], cfg["ivf"], cfg["hnsw"]
        if kind not in SEARCHES:
            raise UserError(f"config key 'search': {kind!r} is not one of {', '.join(SEARCHES)} (e.g. search=ivf)")
        if kind != "exact":
            try:
                import faiss  # noqa: F401
            except ImportError:
                raise UserError(f"config key 'search': {kind} needs faiss (pip install faiss-cpu, see "
                                "requirements.txt), or set search=exact") from None
        return cls(kind, cfg["search_candidates"], ivf["nlist"], ivf["nprobe"], hnsw["M"], hnsw["ef_search"],
                   hnsw["ef_construction"])

    def lists(self, rows: int) -> int:
        """IVF's number of lists for a gallery of `rows`: nlist, or ~4 sqrt(rows) (at most rows / 40: k-means needs
        ~40 training rows a list)."""
        return max(1, min(self.nlist or round(4 * rows ** 0.5), rows if self.nlist else rows // _TRAIN_PER_LIST))


class GalleryIndex(NamedTuple):
    """build_index()'s answer: the faiss index, the Search it was built for, and its train / add seconds."""
    index: object
    search: Search
    train_s: float
    add_s: float


def concat_scaled(arrays: list, weights) -> np.ndarray:
    """One float32 array of per-model rows (equal row counts) side by side, model m's block multiplied by
    sqrt(w_m), so a dot product of two such rows = sum_m w_m <a_m, b_m>."""
    out = np.empty((arrays[0].shape[0], sum(a.shape[1] for a in arrays)), np.float32)
    o = 0
    for a, wm in zip(arrays, weights):
        np.multiply(a, np.float32(np.sqrt(wm)), out=out[:, o:o + a.shape[1]], dtype=np.float32)
        o += a.shape[1]
    return out


def build_index(gallery: list, weights, search: Search, max_memory: int = 2 << 30) -> GalleryIndex:
    """The faiss index of a gallery (one (N, D_m) array per model, fp16 memmaps normally; weights: one per model)
    for search.kind "ivf" or "hnsw", in the concatenated space of concat_scaled, added chunk by chunk. IVF's lists
    come from k-means on 40 rows a list, drawn with a fixed seed (the same index every run)."""
    import faiss

    N, D = gallery[0].shape[0], sum(g.shape[1] for g in gallery)
    step = int(np.clip(max_memory // (8 * D), 1, _ADD_ROWS))  # the fp32 chunk and faiss's own copy of it
    t = time.perf_counter()
    if search.kind == "ivf":
        nlist = search.lists(N)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = _KMEANS_ITERATIONS
        n_train = min(N, _TRAIN_PER_LIST * nlist, max(nlist, max_memory // (4 * D)))
        sample = np.sort(np.random.default_rng(0).choice(N, n_train, replace=False))
        index.train(concat_scaled([g[sample] for g in gallery], weights))
        index.nprobe = min(search.nprobe, nlist)
    elif search.kind == "hnsw":
        index = faiss.IndexHNSWFlat(D, search.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = search.ef_construction
        index.hnsw.efSearch = max(search.ef_search, search.candidates)  # HNSW returns at most efSearch rows
    else:
        raise ValueError(f"build_index: search.kind must be 'ivf' or 'hnsw', got {search.kind!r}")
    train_s = time.perf_counter() - t
    for a in range(0, N, step):
        index.add(concat_scaled([g[a:a + step] for g in gallery], weights))
    return GalleryIndex(index, search, train_s, time.perf_counter() - t - train_s)


def rank_candidates(job, built: GalleryIndex, out_c: np.ndarray, out_s: np.ndarray) -> None:
    """rank() through an approximate index, into out_c / out_s: each query's built.search.candidates best rows by
    the index, with their exact scores (a flat index scores a candidate on its fp32 copy of the row: the weighted
    fp32 inner product rank() computes, to rounding), then per class as rank() does (job.K = 0: the max; else the
    sum of the K best among the candidates), ties -> smaller class. job: rank's checked call (queries, weights,
    dense classes, their codes, k, K, byte budget); built: build_index() of its gallery and weights."""
    Q, N, Dt = job.qs[0].shape[0], job.cls.size, sum(q.shape[1] for q in job.qs)
    if built.index.ntotal != N or built.index.d != Dt:
        raise ValueError(f"rank: the index holds {built.index.ntotal} rows x {built.index.d} dims, the gallery "
                         f"{N} x {Dt}: build_index() this gallery")
    n = min(max(built.search.candidates, job.k), N)
    chunk = int(np.clip(job.budget // (n * 64 + 4 * Dt), 1, Q))
    for q0 in range(0, Q, chunk):
        q1 = min(Q, q0 + chunk)
        S, rows = built.index.search(concat_scaled([q[q0:q1] for q in job.qs], job.w), n)
        # a missing row (faiss pads with -1): a class after every real one, dropped
        C = np.where(rows >= 0, job.cls[np.maximum(rows, 0)], job.uniq.size)
        _top_classes(S, C, job, out_c[q0:q1], out_s[q0:q1])


def _top_classes(S, C, job, out_c, out_s):
    """Per row of S (queries x candidates, each row by score descending, as faiss returns them; C their dense
    classes, uniq.size = no row): the job.k best classes by their max (K = 0) or the sum of their K best scores
    (added in float64), ties -> smaller class, into out_c / out_s."""
    order = np.argsort(C, axis=1, kind="stable")  # by class, each class's rows still by score descending
    cs, ss = np.take_along_axis(C, order, 1), np.take_along_axis(S, order, 1)
    first = np.ones(cs.shape, bool)
    first[:, 1:] = cs[:, 1:] != cs[:, :-1]
    V = np.full(cs.shape, -np.inf, np.float32)  # each class's score at its first column, columns by class
    if job.K:
        col = np.arange(cs.shape[1])
        rank_in_class = col - np.maximum.accumulate(np.where(first, col, 0), axis=1)
        kept = np.where((rank_in_class < job.K) & (cs < job.uniq.size), ss, 0)  # faiss pads with -3.4e38
        V[first] = np.add.reduceat(kept.ravel(), np.flatnonzero(first), dtype=np.float64)
    else:
        V[first] = ss[first]
    V[cs >= job.uniq.size] = -np.inf
    cols, vals = top_columns(V, job.k)  # ties -> smaller column = smaller class
    found = vals > -np.inf
    out_c[:, :cols.shape[1]] = np.where(found, job.uniq[np.minimum(np.take_along_axis(cs, cols, 1),
                                                                   job.uniq.size - 1)], -1)
    out_s[:, :cols.shape[1]] = vals
