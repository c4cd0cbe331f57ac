"""Package trained runs as an offline Kaggle kernel: kernels/<name>/ with a models dataset, a code dataset (the
floors of the pipeline inference stands on + wheels) and the kernel itself, then run the kernel offline on the local
data and check its submission against ./run.sh ensemble's, byte for byte (--no-verify skips that).

  kernels/<name>/models/  dataset <owner>/<name>-models: kernel.json; per model model.safetensors (weights only),
                          config.yaml, train_config.yaml, meta.json, the cached gallery embeddings (.npy, .csv,
                          manifest.json)
  kernels/<name>/code/    dataset <owner>/<name>-code: pipeline/ (whole floors: core, config, data, model,
                          retrieval, inference, kernel), wheels/, requirements-kernel.txt
  kernels/<name>/kernel/  kernel.py + kernel-metadata.json (internet off, GPU on, private)
  kernels/<name>/package.json  every file with its size, the versions, the git commit; verified.json after a check

Nothing holding a Kaggle credential is written (pipeline/core/guard.py); the package appears whole or not at all.
Then: ./run.sh upload <name>.

--folds 0-4 packages every config's fold models (models/<config>-fold<k>/; all of them rank the test images, as
`ensemble --folds` does). --from-report runs/ensembles/<out> packages the best subset of an ensemble-report (its
configs, folds, checkpoint, data and inference tricks, from its best.json) instead of --models.

example: ./run.sh kernel hotel --models m1 m2 m3 --data data/demo --fold 0 --owner myname [--dba 5,3]
         ./run.sh kernel hotel --from-report runs/ensembles/table2 --owner myname"""
from pipeline.config import add_run_set_arguments
from pipeline.inference.tricks import add_trick_arguments
from pipeline.kernel.package import DEFAULT_PLATFORMS, WHEELS


def add_arguments(p):
    p.add_argument("name", help="kernel name: lower-case letters, digits and '-' (also the datasets' prefix)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--models", nargs="+", metavar="config", help="trained configs (m1 m2 ...)")
    source.add_argument("--from-report", metavar="REPORT", help="an ensemble-report's folder (runs/ensembles/<out>): "
                        "package its best subset with its folds, checkpoint, data and tricks")
    add_run_set_arguments(p, folds=True)
    p.add_argument("--competition", help="Kaggle competition slug (default: the config's `competition`)")
    p.add_argument("--owner", help="Kaggle user that will own the datasets and kernel (default: the username in "
                   "KAGGLE_USERNAME or kaggle.json)")
    p.add_argument("--python-version", default="3.11", help="the kernel image's Python, for the wheels (3.11)")
    p.add_argument("--platform", action="append", metavar="TAG",
                   help=f"wheel platform tag, repeatable (default: {' '.join(DEFAULT_PLATFORMS)})")
    p.add_argument("--wheels", nargs="*", default=list(WHEELS), metavar="DIST",
                   help=f"installed dists to ship as wheels, with their dependencies not in "
                   f"pipeline/kernel/kaggle_baseline.txt (default: {' '.join(WHEELS)})")
    p.add_argument("--no-verify", action="store_true", help="skip the offline run of the kernel on --data")
    add_trick_arguments(p)


def run(args):
    from pipeline.experiments.ensemble import kernel_runs
    from pipeline.kernel.package import build

    cfgs, tricks = kernel_runs(args)
    build(args.name, cfgs, tricks=tricks, owner=args.owner,
          competition=args.competition, python_version=args.python_version,
          platforms=args.platform or list(DEFAULT_PLATFORMS), wheels=args.wheels, verify_it=not args.no_verify)
