"""Check a submission file against the dataset before uploading: prints `OK: N rows` or the first problem.

The expected image ids and class labels come from the data folder: every test image exactly
once, 5 distinct known class ids per row, the competition's header.

example: ./run.sh validate submissions/my_sub.csv --data data/demo"""


def add_arguments(p):
    p.add_argument("file", help="submission CSV to check")
    p.add_argument("--data", required=True, help="competition / dataset folder the submission is for")


def run(args):
    from pipeline.data.layouts import load_dataset
    from pipeline.kaggle.submission import validate_submission

    ds = load_dataset(args.data)
    rows = validate_submission(args.file, ds.test_ids, ds.classes, ds.id_column, ds.label_column)
    print(f"OK: {len(rows)} rows")
