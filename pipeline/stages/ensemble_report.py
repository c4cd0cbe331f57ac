"""Val MAP@5 of the equal-weight ensemble of every subset of the given models (like the 7th-place paper's Table 2).

Every non-empty subset of up to --max-size models (default: all of them) is scored on the validation fold exactly
as `ensemble` scores its ensemble: summed cosine similarities, per-class max over the gallery, top 5 classes,
validation images against the training images without them. Each model's embeddings are loaded once. The best
subset of each size is marked. Writes runs/ensembles/<out>/report.md, report.csv, report.json and report.png
(each subset's score by subset size, the best of each size highlighted). 2^n - 1 subsets: more than 4096 is
refused unless --max-size limits the count. With --folds 0-4 (or all) each subset of configs is scored out of fold
(each fold's runs on its validation images, pooled), as `ensemble --folds` scores. best.json records the best subset
(its configs, folds, checkpoint, data and tricks): ./run.sh kernel NAME --from-report runs/ensembles/<out> packages it.

With --auto the subset and the tricks are chosen on one half of the validation images (a seeded hash of their ids)
and confirmed on the other half (experiments/ablate.py: auto_choose); best.json holds that choice.

example: ./run.sh ensemble-report m1 m2 m3 m5 --data data/demo --fold 0 --max-size 3 --out table2
         ./run.sh ensemble-report demo_lite0 demo_lite1 demo_lite2 --auto --out demo"""
from pipeline.config import add_run_set_arguments, config_names, load_run_set
from pipeline.core.errors import UserError
from pipeline.inference.tricks import add_trick_arguments, tricks_from_args


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (names or .yaml paths); key=value "
                   "overrides may follow")
    add_run_set_arguments(p, folds=True)
    p.add_argument("--max-size", type=int, help="largest subset scored (default: all the models)")
    p.add_argument("--out", help="report name (default: the config names joined by '+')")
    p.add_argument("--auto", action="store_true", help="choose the subset and the inference tricks on one half of "
                   "the validation images, confirm them on the other: auto.md and best.json")
    add_trick_arguments(p)


def run(args):
    from pipeline.experiments.ensemble import ensemble_report

    cfgs = load_run_set(args.configs, args)
    if not cfgs:
        raise UserError("no configs given: ./run.sh ensemble-report m1 m2 m3 ...")
    if args.max_size is not None and args.max_size < 1:
        raise UserError(f"--max-size {args.max_size}: give 1 or more")
    ensemble_report(cfgs, args.max_size, args.out, tricks=tricks_from_args(args, len(config_names(cfgs))),
                    auto=args.auto)
