"""Package trained runs as an offline Kaggle kernel: kernels/<name>/ with a models dataset, a code dataset (the
floors of the pipeline inference stands on + wheels) and the kernel itself, then run the kernel offline on the local
data and check its submission against ./run.sh ensemble's, byte for byte (--no-verify skips that).

  kernels/<name>/models/  dataset <owner>/<name>-models: kernel.json; per model model.safetensors (weights only),
                          config.yaml, train_config.yaml, meta.json, the cached gallery embeddings (.npy, .csv,
                          manifest.json)
  kernels/<name>/code/    dataset <owner>/<name>-code: pipeline/ (whole floors: core, config, data, model,
                          retrieval, inference, kernel), wheels/, requirements-kernel.txt
  kernels/<name>/kernel/  kernel.py + kernel-metadata.json (internet off, machine_shape: --accelerator, private)
  kernels/<name>/package.json  every file with its size, the versions, the git commit; verified.json after a check

Nothing holding a Kaggle credential is written (pipeline/core/guard.py); the package appears whole or not at all.
The wheels are for Kaggle's image (Python 3.12, pipeline/kernel/kaggle_baseline.txt), and only what it lacks ships.
It prints the projected run time on the accelerator for the competition's test photos (kernel_test_images) and
warns above half of kernel_time_limit_hours. Then: ./run.sh upload <name>.
--refresh-baseline [DIR] rewrites kaggle_baseline.txt from Kaggle's published image files (docs/kaggle-image/).

--folds 0-4 packages every config's fold models (models/<config>-fold<k>/; all of them rank the test images, as
`ensemble --folds` does). --from-report runs/ensembles/<out> packages the best subset of an ensemble-report (its
configs, folds, checkpoint, data and inference tricks, from its best.json) instead of --models.

example: ./run.sh kernel hotel --models m1 m2 m3 --data data/demo --fold 0 --owner myname [--dba 5,3]
         ./run.sh kernel hotel --from-report runs/ensembles/table2 --owner myname"""
from pipeline.config import add_run_set_arguments
from pipeline.inference.tricks import add_trick_arguments
from pipeline.kernel.accelerators import ACCELERATORS
from pipeline.kernel.package import NEEDS


def add_arguments(p):
    p.add_argument("name", nargs="?", help="kernel name: lower-case letters, digits and '-' (also the datasets' "
                   "prefix)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--models", nargs="+", metavar="config", help="trained configs (m1 m2 ...)")
    source.add_argument("--from-report", metavar="REPORT", help="an ensemble-report's folder (runs/ensembles/<out>): "
                        "package its best subset with its folds, checkpoint, data and tricks")
    add_run_set_arguments(p, folds=True)
    p.add_argument("--competition", help="Kaggle competition slug (default: the config's `competition`)")
    p.add_argument("--owner", help="Kaggle user that will own the datasets and kernel (default: the username in "
                   "KAGGLE_USERNAME or kaggle.json)")
    p.add_argument("--accelerator", action="append", metavar="GPU",
                   help=f"the kernel's machine: {', '.join(ACCELERATORS)} or the client's names (default T4; "
                   "P100 is refused unless given twice: Kaggle's torch has no kernels for it)")
    p.add_argument("--python-version", help="the image's Python, for the wheels (default: the python== line of "
                   "pipeline/kernel/kaggle_baseline.txt)")
    p.add_argument("--platform", action="append", metavar="TAG",
                   help="wheel platform tag, repeatable (default: those of the image's OS, from the baseline)")
    p.add_argument("--wheels", nargs="*", default=[], metavar="DIST",
                   help="installed dists to ship as wheels even where Kaggle's image has them, with their "
                   f"dependencies not in the baseline (always shipped: what the image lacks of {' '.join(NEEDS)})")
    p.add_argument("--refresh-baseline", nargs="?", const="docs/kaggle-image", metavar="DIR",
                   help="rewrite pipeline/kernel/kaggle_baseline.txt from Kaggle's published image files in DIR "
                   "(default docs/kaggle-image: a pip freeze, an os-info file, sources.txt) and stop; needs PyPI")
    p.add_argument("--no-verify", action="store_true", help="skip the offline run of the kernel on --data")
    add_trick_arguments(p)


def run(args):
    from pipeline.core.errors import UserError
    from pipeline.experiments.ensemble import kernel_runs
    from pipeline.kernel.package import build, refresh_baseline

    if args.refresh_baseline:
        return refresh_baseline(args.refresh_baseline)
    if not args.name:
        raise UserError("kernel: give the kernel's NAME (./run.sh kernel NAME --models m1 ...)")
    gpu = args.accelerator or ["T4"]
    cfgs, tricks = kernel_runs(args)
    build(args.name, cfgs, tricks=tricks, owner=args.owner, competition=args.competition,
          python_version=args.python_version, platforms=args.platform, wheels=args.wheels, accelerator=gpu[-1],
          p100_confirmed=len(gpu) > 1 and len({g.lower() for g in gpu}) == 1, verify_it=not args.no_verify)
