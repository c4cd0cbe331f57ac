"""Score a submission against a truth CSV: prints MAP@5 and how many rows were scored.

The submission must list every image id of the truth file and no others (1 to 5 space-separated labels per row,
each label once); the truth file has one label per image id.

example: ./run.sh score submissions/my_sub.csv --truth data/demo/test_truth.csv"""


def add_arguments(p):
    p.add_argument("submission", help="submission CSV (image_id,hotel_id with up to 5 labels per row)")
    p.add_argument("--truth", required=True, help="truth CSV: one image id and its label per row")
    p.add_argument("--id-column", default="image_id", help="image id column of both files (default image_id)")
    p.add_argument("--label-column", default="hotel_id", help="label column of both files (default hotel_id)")


def run(args):
    from pipeline.kaggle.submission import score_submission

    score, rows = score_submission(args.submission, args.truth, args.id_column, args.label_column)
    print(f"MAP@5: {score:.5f} ({rows} rows scored against {args.truth})")
