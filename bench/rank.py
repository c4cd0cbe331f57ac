"""Benchmark pipeline.retrieval.rank against the bare matrix product and faiss IndexFlatIP on random data; JSON on
stdout.

usage (from the repo root): python bench/rank.py [--queries 2000] [--gallery 45000] [--dim 4096] [--models 1]
                            [--classes 3116] [--max-memory BYTES] [--repeat 3] [--paper-scale]
bare = a plain product of the same shapes with the GEMM rank used (--cpu-gemm: oneDNN via torch, which
pipeline.retrieval.knn picks on AVX-512 CPUs, or numpy's OpenBLAS, which faiss also uses); both bare products are
reported.
ratio_vs_bare = bare / rank (1.0 = ranking costs nothing beyond the matmul); ratio_vs_faiss = rank / faiss."""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _unit_rows(rng, n, d, dtype, step=4096):
    # generated in slices so the fp32 temp never holds the whole gallery (keeps peak RSS about rank, not setup)
    out = np.empty((n, d), dtype)
    for a in range(0, n, step):
        x = rng.standard_normal((min(n, a + step) - a, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[a:a + len(x)] = x
    return out


_SETTLE_S = 0.5


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        # idle first: BLAS/OpenMP pools (numpy's OpenBLAS, faiss's, torch's) spin-wait for a while after a call,
        # and one pool's spinning threads would otherwise steal the next timed call's cores
        time.sleep(_SETTLE_S)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--gallery", type=int, default=45000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--models", type=int, default=1)
    p.add_argument("--classes", type=int, default=3116)
    p.add_argument("--max-memory", type=int, default=2 << 30, help="rank()'s extra-memory budget in bytes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu-gemm", choices=["auto", "onednn", "numpy"], default="auto",
                   help="force rank's CPU matrix product (default: what pipeline.retrieval.knn picks here)")
    p.add_argument("--paper-scale", action="store_true", help="Q=5,000, N=44,703, 6 models x 4,096 dims")
    args = p.parse_args(argv)
    if args.paper_scale:
        args.queries, args.gallery, args.dim, args.models = 5000, 44703, 4096, 6

    import faiss
    import torch

    import pipeline.retrieval.knn as knn_mod
    from pipeline.retrieval.knn import gemm, gemm_backend
    from pipeline.retrieval.rank import rank

    if args.cpu_gemm != "auto":
        knn_mod._GEMM = args.cpu_gemm

    rng = np.random.default_rng(0)
    qs = [_unit_rows(rng, args.queries, args.dim, np.float32) for _ in range(args.models)]
    gs = [_unit_rows(rng, args.gallery, args.dim, np.float16) for _ in range(args.models)]
    labels = rng.integers(0, args.classes, args.gallery)

    def run_rank():
        rank(qs, gs, labels, k=5, max_memory=args.max_memory, device=args.device,
             log=lambda m: print(m, file=sys.stderr))

    rss_before = _rss_mb()
    times = {"rank": [_best(run_rank, 1)]}  # first call alone, so peak RSS is rank's, not the baselines'
    peak_after_rank = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"

    # the same work as one plain product: all models side by side (equal weights = one long dot product);
    # the fp32 gallery lives only inside the faiss index, and the bare product reads it there (no second copy)
    q_all = np.ascontiguousarray(np.concatenate(qs, axis=1))
    index = faiss.IndexFlatIP(q_all.shape[1])
    for a in range(0, args.gallery, 4096):
        index.add(np.concatenate([g[a:a + 4096].astype(np.float32) for g in gs], axis=1))
    g_all = faiss.rev_swig_ptr(index.get_xb(), args.gallery * q_all.shape[1]).reshape(args.gallery, -1)
    onednn = hasattr(torch.ops.mkldnn, "_linear_pointwise")
    times.update(bare_numpy=[], bare_onednn=[], faiss=[])
    # interleaved repeats, best of each: other load on the machine then hits all three alike
    for r in range(args.repeat):
        if r:
            times["rank"].append(_best(run_rank, 1))
        times["bare_numpy"].append(_best(lambda: q_all @ g_all.T, 1))
        if onednn:
            times["bare_onednn"].append(_best(lambda: gemm(q_all, g_all, backend="onednn"), 1))
        times["faiss"].append(_best(lambda: index.search(q_all, 100), 1))
    rank_s, faiss_s = min(times["rank"]), min(times["faiss"])
    bare_s = min(times["bare_onednn"] if gemm_backend() == "onednn" else times["bare_numpy"])

    print(json.dumps({
        "queries": args.queries, "gallery": args.gallery, "dim": args.dim, "models": args.models,
        "classes": args.classes, "device": device, "threads": torch.get_num_threads(),
        "cpu_gemm": gemm_backend(), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "rank_seconds": round(rank_s, 3), "bare_matmul_seconds": round(bare_s, 3),
        "bare_numpy_seconds": round(min(times["bare_numpy"]), 3),
        "bare_onednn_seconds": round(min(times["bare_onednn"]), 3) if onednn else None,
        "faiss_top100_seconds": round(faiss_s, 3),
        "ratio_vs_bare": round(bare_s / rank_s, 3), "ratio_vs_faiss": round(rank_s / faiss_s, 3),
        "peak_rss_mb": round(peak_after_rank), "rank_extra_rss_mb": round(peak_after_rank - rss_before),
        "max_memory_mb": round(args.max_memory / 2**20),
        "all_seconds": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
