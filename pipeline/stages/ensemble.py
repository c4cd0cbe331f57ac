"""Equal-weight ensemble of trained runs: sum of the models' cosine similarities (= dot product of the concatenated
per-model normalised embeddings), per-class max over the gallery, top 5 unique classes. Reports each model's and
the ensemble's validation MAP@5 (validation images against the gallery without them) and writes the test
submission to submissions/<out>.csv (plus runs/ensembles/<out>/scores.json and scores.md). The inference tricks
(flip TTA, multi-crop, QE/DBA, PCA, per-class sum, weights) are options, off by default; see evaluate --ablate.
With --folds 0-4 (or 0,2, or all) the runs are each config's fold models (m1/fold0 ...): each model, each config and
the ensemble are scored out of fold (per fold, that fold's runs on its validation images; pooled over every
validated image), and the test images are ranked with every fold model, equal weights (--weights: one per config).

example: ./run.sh ensemble m1 m2 m3 --data data/demo --fold 0 --out m123 [--flip] [--dba 5,3]
         ./run.sh ensemble m1 m2 --folds 0-4 --out m12-cv"""
from pipeline.config import add_run_set_arguments, config_names, load_run_set
from pipeline.core.errors import UserError
from pipeline.inference.tricks import add_trick_arguments, tricks_from_args


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (m1 m2 ...); key=value overrides "
                   "may follow")
    add_run_set_arguments(p, folds=True)
    p.add_argument("--out", help="submission name (default: the config names joined by '+', then -folds<SET>)")
    add_trick_arguments(p)


def run(args):
    from pipeline.experiments.ensemble import ensemble

    cfgs = load_run_set(args.configs, args)
    if not cfgs:
        raise UserError("no configs given: ./run.sh ensemble m1 m2 m3 ...")
    ensemble(cfgs, args.out, tricks=tricks_from_args(args, len(config_names(cfgs))))
