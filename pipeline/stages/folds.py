"""Split the training images into folds, stratified by class: writes folds/folds.csv (image_id,label,fold).

The split is seeded and independent of file-system order. Classes with one image get fold -1: always in
training, never validated. Training on fold k validates on fold k (fold 0 of 10 = the 90/10 split).

example: ./run.sh folds --data data/demo --n-folds 10 --seed 42"""


def add_arguments(p):
    p.add_argument("--data", required=True, help="competition folder")
    p.add_argument("--n-folds", type=int, default=10, help="number of folds (default 10: a 90/10 split)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--layout", default=None, help="dataset layout (auto | hotelid | csv)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. csv.label_column=id")
    p.add_argument("--out", default="folds/folds.csv", help="output CSV (default folds/folds.csv)")


def run(args):
    from pipeline.config import load_config
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset

    ds = load_dataset(args.data, load_config("default", args.overrides, layout=args.layout))
    write_folds(ds, args.out, args.n_folds, args.seed, log=print)
