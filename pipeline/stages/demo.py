"""Run the whole pipeline offline on the embedded dataset, then print and save a report.

make-data, folds, train three small models (all fine-tuned from the real ImageNet lite0 weights, the only
ImageNet weights available offline; heads, pooling, sizes and seeds differ so the ensemble is diverse), embed,
evaluate each and the equal-weight ensemble on the validation fold, score the test submissions against the
generated truth, and compare with a random-init network. Writes runs/demo/report.json and runs/demo/report.md.

example: ./run.sh demo"""
from pipeline.experiments.demo import DEMO_MODELS


def add_arguments(p):
    p.add_argument("--hotels", type=int, default=None, help="hotels in the generated dataset (default: make-data's)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--models", nargs="+", default=DEMO_MODELS, help="configs to train (default: the three demo ones)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every demo model")


def run(args):
    from pipeline.experiments.demo import demo

    demo(args.hotels, args.seed, args.models, args.overrides)
