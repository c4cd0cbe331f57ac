"""Benchmark approximate search (search=ivf / hnsw, pipeline/retrieval/search.py) against our exact ranking
(pipeline.retrieval.rank.rank) on a synthetic clustered gallery; JSON on stdout.

usage (from the repo root): python bench/ann.py [--rows 1000000] [--dim 256] [--per-class 10] [--queries 2000]
                            [--noise 1.0] [--latent 12] [--nlist N] [--nprobe 32,64,128] [--M N]
                            [--ef-search 64,128,256] [--ef-construction N] [--candidates N] [--methods ivf,hnsw]
                            [--repeat 1] [--faiss-flat]
quick try: python bench/ann.py --rows 100000 (~2 minutes here; the full 1M run took 9.4 minutes, 3 GB peak RSS)

The gallery: rows / per-class classes whose centres are unit vectors near a random `latent`-dimensional subspace
(real embeddings have a low intrinsic dimension: similar hotels sit near each other), `per-class` rows each,
row = normalise(centre + noise * a random unit vector) (noise 1.0: a row's cosine to its centre ~0.7, to another
row of its class ~0.5), stored fp16 in a memmap as embed writes them. Queries: `queries` fresh rows of random
classes, fp16; exact's MAP@5 against their true classes shows how hard the gallery is (latent 12 at 1M rows:
0.77, Hotel-ID-like; latent 32: ~1.0 with the 2nd-5th classes decided by noise, the hardest case for an index).
Each index is built once (train_s, add_s) and searched with each --nprobe / --ef-search value (omitted: the
config's): search_s (ranking the queries once the index exists), recall_at_5 (the share of exact's top-5 classes
found in the approximate top 5), top1_agreement, map5, speedup (exact's rank / search_s), speedup_with_build
(exact / (search_s + train_s + add_s)), goal_met (recall_at_5 >= 0.99 and speedup >= 10), default (the config's
value). --faiss-flat adds faiss IndexFlatIP top-100 (exact rows, no per-class ranking) for scale."""
import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_SETTLE_S = 0.5  # idle before each timed call: BLAS/OpenMP pools spin-wait after a call (as bench/rank.py)
_STEP = 65536


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_gallery(path, rows, dim, per_class, noise, latent, seed=0):
    """(memmap (rows, dim) fp16 at path, labels, class centres fp32): generated in slices (bounded memory)."""
    rng = np.random.default_rng(seed)
    classes = max(1, rows // per_class)
    basis = _unit(rng.standard_normal((latent, dim), dtype=np.float32))
    centres = _unit(rng.standard_normal((classes, latent), dtype=np.float32) @ basis
                    + 0.3 * _unit(rng.standard_normal((classes, dim), dtype=np.float32))).astype(np.float32)
    labels = rng.permutation(np.arange(rows) % classes)  # rows of a class scattered over the gallery
    g = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    for a in range(0, rows, _STEP):
        b = min(rows, a + _STEP)
        g[a:b] = _rows(rng, centres[labels[a:b]], noise)
    g.flush()
    return np.load(path, mmap_mode="r"), labels, centres


def _rows(rng, centres, noise):
    return _unit(centres + noise * _unit(rng.standard_normal(centres.shape, dtype=np.float32))).astype(np.float16)


def _timed(fn, repeat):
    best, out = None, None
    for _ in range(repeat):
        time.sleep(_SETTLE_S)
        t = time.perf_counter()
        out = fn()
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    return best, out


def _recall(approx, exact):
    """Mean over queries of |approx top 5 & exact top 5| / |exact top 5| (classes), and the top-1 agreement."""
    hits = [len(set(a) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx, exact)]
    return float(np.mean(hits)), float(np.mean(approx[:, 0] == exact[:, 0]))


def _values(text, default):
    return [int(v) for v in text.split(",")] if text else [default]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="gallery rows (quick try: 100000)")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension (1M x 256 fp16 = 512 MB)")
    p.add_argument("--per-class", type=int, default=10, help="gallery rows per class")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--noise", type=float, default=1.0, help="row = normalise(centre + noise * unit noise)")
    p.add_argument("--latent", type=int, default=12, help="dimension of the subspace the class centres lie near")
    p.add_argument("--nlist", type=int, default=None, help="ivf.nlist (default: the config's)")
    p.add_argument("--nprobe", default=None, help="ivf.nprobe values, comma-separated (default: the config's)")
    p.add_argument("--M", type=int, default=None, help="hnsw.M (default: the config's)")
    p.add_argument("--ef-search", default=None, help="hnsw.ef_search values, comma-separated (default: the config's)")
    p.add_argument("--ef-construction", type=int, default=None, help="hnsw.ef_construction (default: the config's)")
    p.add_argument("--candidates", type=int, default=None, help="search_candidates (default: the config's)")
    p.add_argument("--methods", default="ivf,hnsw", help="approximate searches to run (ivf,hnsw)")
    p.add_argument("--repeat", type=int, default=1, help="timed repeats of each search (best taken)")
    p.add_argument("--max-memory", type=int, default=2 << 30, help="rank()'s extra-memory budget in bytes")
    p.add_argument("--faiss-flat", action="store_true", help="also time faiss IndexFlatIP top-100")
    args = p.parse_args(argv)

    import faiss
    import torch

    from pipeline.config import load_config
    from pipeline.retrieval.metrics import map_at_k
    from pipeline.retrieval.rank import rank
    from pipeline.retrieval.search import Search, build_index

    overrides = [f"{k}={v}" for k, v in (("ivf.nlist", args.nlist), ("hnsw.M", args.M),
                                          ("hnsw.ef_construction", args.ef_construction),
                                          ("search_candidates", args.candidates)) if v is not None]
    cfg = load_config("default", overrides)
    sweep = {"ivf": _values(args.nprobe, cfg["ivf"]["nprobe"]), "hnsw": _values(args.ef_search,
                                                                                 cfg["hnsw"]["ef_search"])}
    quiet = lambda *a: None  # noqa: E731
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ann-bench-") as tmp:
        t = time.perf_counter()
        g, labels, centres = make_gallery(Path(tmp) / "gallery.npy", args.rows, args.dim, args.per_class, args.noise,
                                          args.latent)
        rng = np.random.default_rng(1)
        truth = rng.integers(0, len(centres), args.queries)
        q = _rows(rng, centres[truth], args.noise)
        map5 = lambda top: round(map_at_k([list(r) for r in top], list(truth)), 4)  # noqa: E731
        made_s = time.perf_counter() - t
        exact_s, (exact, _) = _timed(lambda: rank(q, g, labels, k=5, max_memory=args.max_memory, device="cpu",
                                                  log=quiet), args.repeat)
        out = {"rows": args.rows, "dim": args.dim, "classes": len(centres), "per_class": args.per_class,
               "queries": args.queries, "noise": args.noise, "latent": args.latent,
               "threads": {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()},
               "gallery_seconds": round(made_s, 1), "exact": {"search_s": round(exact_s, 3), "map5": map5(exact)}}
        if args.faiss_flat:
            flat = faiss.IndexFlatIP(args.dim)
            for a in range(0, args.rows, _STEP):
                flat.add(g[a:a + _STEP].astype(np.float32))
            out["faiss_flat_top100"] = {"search_s": round(_timed(lambda: flat.search(q.astype(np.float32), 100),
                                                                  args.repeat)[0], 3)}
            del flat
        for kind in args.methods.split(","):
            search = Search.of(dict(cfg, search=kind))
            built = build_index([g], [1.0], search, args.max_memory)
            index, runs = built.index, []
            for v in sweep[kind]:
                if kind == "ivf":
                    index.nprobe = min(v, index.nlist)
                else:
                    index.hnsw.efSearch = max(v, search.candidates)  # as build_index sets it
                search_s, (approx, _) = _timed(lambda: rank(q, g, labels, k=5, max_memory=args.max_memory,
                                                            device="cpu", log=quiet, index=built), args.repeat)
                recall, top1 = _recall(approx, exact)
                runs.append({"nprobe" if kind == "ivf" else "ef_search": v, "search_s": round(search_s, 3),
                             "recall_at_5": round(recall, 4), "top1_agreement": round(top1, 4), "map5": map5(approx),
                             "speedup": round(exact_s / search_s, 1),
                             "speedup_with_build": round(exact_s / (search_s + built.train_s + built.add_s), 2),
                             "goal_met": bool(recall >= 0.99 and exact_s / search_s >= 10),
                             "default": v == (search.nprobe if kind == "ivf" else search.ef_search)})
            params = {"nlist": index.nlist} if kind == "ivf" else {"M": search.M,
                                                                   "ef_construction": search.ef_construction}
            out[kind] = {**params, "candidates": search.candidates, "train_s": round(built.train_s, 1),
                         "add_s": round(built.add_s, 1), "runs": runs}
            built = index = None  # freed before the next index is built
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
