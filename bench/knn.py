"""Benchmark pipeline.retrieval.knn.nearest against faiss IndexFlatIP top-k on random unit fp16 data; JSON on
stdout.

usage (from the repo root): python bench/knn.py [--queries 2000] [--gallery 20000] [--dim 512] [--k 10]
                            [--max-memory BYTES] [--repeat 3]
ours = nearest() on the fp16 gallery (cast to fp32 block by block) with the GEMM it picks here, and again with numpy's
OpenBLAS forced (the BLAS faiss uses); faiss = IndexFlatIP.search on an index built from an fp32 copy of the gallery
(the build is timed apart). Repeats are interleaved, best of each, each call after a 0.5 s pause so one library's
spin-waiting threads do not slow the next. same_indices: the fraction of (query, place) neighbours both return
(where they differ, near-ties were ordered by different fp32 roundings: max_score_diff is the largest score gap at
the same place). ratio = ours / faiss search (< 1: ours is faster)."""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_SETTLE_S = 0.5


def _unit_rows(rng, n, d, dtype):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)


def _timed(fn):
    time.sleep(_SETTLE_S)
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--gallery", type=int, default=20000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--max-memory", type=int, default=2 << 30, help="nearest()'s extra-memory budget in bytes")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    import faiss
    import torch

    from pipeline.retrieval.knn import gemm_backend, nearest

    rng = np.random.default_rng(0)
    q = _unit_rows(rng, args.queries, args.dim, np.float16)
    g = _unit_rows(rng, args.gallery, args.dim, np.float16)

    def build():
        index = faiss.IndexFlatIP(args.dim)
        index.add(g.astype(np.float32))
        return index

    build_s, index = _timed(build)
    q32 = q.astype(np.float32)
    runs = {"ours": lambda: nearest(q, g, args.k, args.max_memory),
            "ours_numpy": lambda: nearest(q, g, args.k, args.max_memory, backend="numpy"),
            "faiss": lambda: index.search(q32, args.k)}
    times, out = {name: [] for name in runs}, {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t, out[name] = _timed(fn)
            times[name].append(t)
    ours, theirs = out["ours"], out["faiss"]
    same = ours.indices == theirs[1]
    best = {name: min(v) for name, v in times.items()}
    print(json.dumps({
        "queries": args.queries, "gallery": args.gallery, "dim": args.dim, "k": args.k,
        "threads": torch.get_num_threads(), "gemm": gemm_backend(),
        "ours_seconds": round(best["ours"], 3), "ours_numpy_seconds": round(best["ours_numpy"], 3),
        "faiss_search_seconds": round(best["faiss"], 3), "faiss_build_seconds": round(build_s, 3),
        "ratio": round(best["ours"] / best["faiss"], 3), "ratio_numpy": round(best["ours_numpy"] / best["faiss"], 3),
        "same_indices": float(same.mean()),
        "same_indices_numpy": float((out["ours_numpy"].indices == theirs[1]).mean()),
        "max_score_diff": float(np.abs(ours.scores - theirs[0]).max()),
        "all_seconds": {name: [round(t, 3) for t in v] for name, v in times.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
