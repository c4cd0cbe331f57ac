"""Pseudo-labels: the test images the ensemble of trained runs labels confidently, as a CSV to train a second round.

The equal-weight ensemble of the runs ranks the test images exactly as `ensemble` does. The margin of an image is
its top-1 class score minus its top-2, on the mean-cosine scale (the same for any number of models); the images
with margin >= --threshold are written as image_id,label,margin,score to --out (default
runs/pseudo/<configs joined by +>.csv) with the choices beside it (.json). Train on them with pseudo=FILE: they join
the training images only, never a validation fold, the folds file or the gallery. With --truth (a CSV
image_id,<label>, e.g. make-data's test_truth.csv) the kept count and precision at several thresholds are reported
(<out stem>_quality.md/.csv/.json).

example: ./run.sh pseudo m1 m2 --data data/demo --threshold 0.05 --truth data/demo/test_truth.csv
         ./run.sh train m1 --data data/demo pseudo=runs/pseudo/m1+m2.csv runs_dir=runs/round2"""
from pipeline.config import add_run_set_arguments, load_run_set


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (m1 m2 ...); key=value overrides "
                   "may follow")
    add_run_set_arguments(p, folds=True)
    p.add_argument("--threshold", type=float, required=True, metavar="T",
                   help="least margin (top-1 minus top-2 mean cosine) of a kept image, e.g. 0.05")
    p.add_argument("--out", help="the CSV (default runs/pseudo/<configs joined by +>.csv)")
    p.add_argument("--truth", metavar="CSV", help="test labels (image_id,<label>): report precision per threshold")


def run(args):
    from pipeline.experiments.pseudo import pseudo_labels

    pseudo_labels(load_run_set(args.configs, args), args.threshold, args.out, args.truth)
