"""Check a submission file against the dataset before uploading: prints `OK: N rows` or the first problem.

The expected image ids, their order's source and the header come from the data folder (its sample submission,
else the layout's defaults); the class labels from its training images: every test image exactly once, 5 distinct
known class ids per row. Stricter than Kaggle's scorer (./run.sh score tells what Kaggle would score).
Config overrides set the csv layout's keys, as for ./run.sh folds.

example: ./run.sh validate submissions/my_sub.csv --data data/whales csv.label_column=individual_id"""


def add_arguments(p):
    p.add_argument("file", help="submission CSV to check")
    p.add_argument("--data", required=True, help="competition / dataset folder the submission is for")
    p.add_argument("--layout", default=None, help="dataset layout (auto | hotelid | csv | query_gallery)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. csv.train_dir=train_images")


def run(args):
    from pipeline.config import load_config
    from pipeline.data.layouts import load_dataset
    from pipeline.retrieval.submission import validate_submission

    ds = load_dataset(args.data, load_config("default", args.overrides, layout=args.layout))
    rows = validate_submission(args.file, ds.test_ids, ds.classes, ds.id_column, ds.label_column)
    print(f"OK: {len(rows)} rows")
