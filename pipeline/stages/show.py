"""Picture of a run's (or an equal-weight ensemble's) retrievals for some validation images.

A PNG grid, one row per query: the validation image, then its top-5 predicted classes (summed cosine similarity,
per-class max over the training images without the validation rows, as `ensemble` ranks), each shown by that
class's best-matching gallery image, framed green for the query's true class and red otherwise, captioned with
the class and its score (the summed cosine: up to the number of models). Queries: --n of them drawn with --seed,
or the first --n without one. Writes runs/ensembles/<names joined by '+'>/show.png unless --out says where.

example: ./run.sh show m1 m2 --data data/demo --fold 0 --n 16 --seed 0"""
from pathlib import Path

from pipeline.config import add_run_set_arguments, load_run_set
from pipeline.core.errors import UserError


def add_arguments(p):
    p.add_argument("runs", nargs="+", metavar="RUN", help="trained configs (names or .yaml paths; several: their "
                   "ensemble); key=value overrides may follow")
    add_run_set_arguments(p)
    p.add_argument("--n", type=int, default=16, help="validation queries shown (default 16)")
    p.add_argument("--seed", type=int, help="draw the queries at random with this seed (default: the first --n)")
    p.add_argument("--out", help="PNG path (default runs/ensembles/<names>/show.png)")


def run(args):
    from pipeline.experiments.show import show

    cfgs = load_run_set(args.runs, args)
    if not cfgs:
        raise UserError("no runs given: ./run.sh show m1 [m2 ...]")
    if args.n < 1:
        raise UserError(f"--n {args.n}: give 1 or more queries")
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the picture is a PNG; give a path ending in .png")
    show(cfgs, args.n, args.seed, args.out)
