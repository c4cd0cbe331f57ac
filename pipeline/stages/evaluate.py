"""Retrieval metrics of trained runs (and of a pretrained backbone, zero-shot) on the validation fold.

Queries are the validation images, the gallery the training images without them (as `ensemble` scores), or with
--leave-one-out the validation images against each other, each skipping itself. --queries test scores labelled
test images (the query/gallery layout's query/ folder) against the whole gallery instead. Metrics (--metrics):
  map@5        Kaggle class-level MAP@5 (top 5 classes by per-class max cosine; = ensemble's per-model score)
  map@k        seed 001's instance mAP@k = mean of 1/min(k, M_q) * sum_{i<=k} P@i * rel(i), one column per k,
               named mAP@1, mAP@5 ... (capital A: not the class-level map@5)
  acc@1        top gallery image has the query's label
  precision@k  relevant images in the top k / k
  recall@k     1 if any relevant image is in the top k (seed 002's Recall@K)
  text         clip runs (head=clip): seed 002's Recall@k of the validation images' held-out captions, text->image
               (t2i_r<k>) and image->text (i2t_r<k>), and the caption's class among the top 5 of the training
               images (t2c_map5, t2c_top5, beside chance's 5 / classes), for the run and, as the reference row
               'untrained <run>', its initialisation (pretrained image encoder, random text tower)
M_q = gallery images with the query's label; a query with M_q = 0 scores 0 and counts. --zero-shot BACKBONE adds
the row 'zero-shot BACKBONE': timm's pretrained backbone, pooled as the config says, no neck, no training (its
features are cached in runs/zero-shot/<backbone>/<size>/). Writes the table to runs/evaluate/<out>/metrics.md,
.csv and .json. The inference-trick flags apply to trained runs: embedding-time ones (--flip, --multicrop,
--gallery-pipeline) to every metric, ranking-time ones (QE, DBA, PCA, --agg) to map@5. --ablate scores the runs'
ensemble once per trick, each alone, and writes ablate.md/.csv/.json/.png beside; with --seeds N, over the runs
`compare --seeds N` trained: mean ± std per trick. --folds 0-4 (or 0,2, or all)
scores each config's run on each fold; --oof (default --folds all) gives the out-of-fold MAP@5: every validated
image scored by the run of the fold that held it out (against that fold's gallery), one row per fold and the
pooled row '<config> out-of-fold', in runs/evaluate/<out>/ (default <configs>-oof<folds>).

example: ./run.sh evaluate m1 m2 --data data/demo --fold 0 --metrics map@5,map@k,acc@1 --k 1,5,10
         ./run.sh evaluate demo_lite0 demo_lite1 demo_lite2 --data data/demo --ablate [--seeds 3]
         ./run.sh evaluate m1 --oof --folds 0-4"""
from pipeline.config import add_fold_arguments
from pipeline.core.errors import UserError
from pipeline.experiments.evaluate import METRICS
from pipeline.inference.tricks import add_trick_arguments, tricks_from_args


def add_arguments(p):
    p.add_argument("runs", nargs="*", metavar="RUN", help="trained configs (names or .yaml paths); key=value "
                   "overrides may follow")
    p.add_argument("--metrics", help=f"comma-separated, of {', '.join(METRICS)} (default all; map@5 with --oof)")
    p.add_argument("--k", default="1,5,10", help="k values of the @k metrics (default 1,5,10)")
    p.add_argument("--leave-one-out", action="store_true", help="queries = gallery = validation images, "
                   "each skipping itself")
    p.add_argument("--queries", choices=["val", "test"], default="val", help="val: the validation fold (default); "
                   "test: the labelled test images (query/gallery layout) against all training images")
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    add_fold_arguments(p, True, "validation fold (default 0)")
    p.add_argument("--oof", action="store_true", help="out-of-fold MAP@5 of each config over --folds (default all)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema"], help="which checkpoint (default best)")
    p.add_argument("--max-memory", type=int, help="bytes of extra memory for the search (default 2 GiB)")
    p.add_argument("--out", help="name of the report (default: the run names joined by '+')")
    p.add_argument("--zero-shot", metavar="BACKBONE", help="also score this timm backbone's pretrained features")
    p.add_argument("--ablate", action="store_true", help="val MAP@5 of the runs' ensemble with each inference trick "
                   "alone vs none")
    p.add_argument("--seeds", type=int, help="with --ablate: over the runs of seeds 1..N that compare trained "
                   "(runs/compare/<--compare>/seed<s>/): mean ± std per trick")
    p.add_argument("--compare", metavar="OUT", help="the comparison's name (compare --out; default: the configs "
                   "joined by '+')")
    add_trick_arguments(p)
    p.set_defaults(overrides=[])  # cli.main appends key=value given after an option here


def run(args):
    from pipeline.config import load_config, load_run_set
    from pipeline.experiments.evaluate import evaluate, parse_ks, parse_metrics

    # argparse puts key=value given before any option into `runs`: they are overrides
    overrides = [r for r in args.runs if "=" in r] + list(args.overrides)
    names = [r for r in args.runs if "=" not in r]
    if not names and not args.zero_shot:
        raise UserError("nothing to evaluate: give trained runs (config names or .yaml paths) or --zero-shot BACKBONE")
    metrics = parse_metrics(args.metrics or ("map@5" if args.oof else ",".join(METRICS)))
    ks = parse_ks(args.k)
    if args.oof and args.folds is None and args.fold is None:
        args.folds = "all"
    cfgs = load_run_set(args.runs, args)
    base = cfgs[0] if cfgs else load_config("default", overrides, data=args.data, fold=args.fold,
                                            checkpoint=args.checkpoint, max_memory=args.max_memory)
    evaluate(cfgs, base, metrics, ks, tricks_from_args(args, len(names)), leave_one_out=args.leave_one_out,
             queries=args.queries, zero_shot=args.zero_shot, out=args.out, ablate=args.ablate, oof=args.oof,
             seeds=args.seeds, compare=args.compare)
