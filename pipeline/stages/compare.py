"""Compare recipes: train and evaluate every config on the same fold with the same seeds, then tabulate the
mean and standard deviation over seeds of each metric, the training time and throughput, next to the zero-shot
row (the pretrained backbone's pooled features, no training). Writes runs/compare/<out>/compare.md, .csv,
.json and compare.png (bar chart of val MAP@5). Runs live in runs/compare/<out>/seed<s>/<config>/fold<k>/; a
finished run is reused and an interrupted one resumed, so rerunning an interrupted comparison loses nothing.

example: ./run.sh compare demo_lite0 demo_supcon demo_triplet --data data/demo --seeds 3 epochs=2"""
from pipeline.core.errors import UserError


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="configs to compare (names or .yaml paths)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per config: 1..N (default 3)")
    p.add_argument("--data", help="competition folder (overrides each config's data)")
    p.add_argument("--fold", type=int, help="validation fold (default 0)")
    p.add_argument("--out", help="name of the comparison (default: the config names joined by '+')")
    p.add_argument("--metrics", default="map@5,map@k,acc@1,precision@k,recall@k,text", help="metrics to report "
                   "(text: the image-text Recall@k of clip runs and their untrained reference row)")
    p.add_argument("--k", default="1,5,10", help="k values of the @k metrics")
    p.add_argument("--zero-shot", metavar="BACKBONE", help="backbone of the zero-shot row (default: the first "
                   "config's); 'none' to skip it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every config, e.g. epochs=2")


def run(args):
    from pipeline.config import load_config
    from pipeline.experiments.compare import compare
    from pipeline.experiments.evaluate import parse_ks, parse_metrics

    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: give 1 or more")
    metrics, ks = parse_metrics(args.metrics), parse_ks(args.k)
    cfgs = [load_config(c, args.overrides, data=args.data, fold=args.fold) for c in args.configs]
    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    compare(cfgs, args.seeds, metrics, ks, args.out or "+".join(names), args.zero_shot)
