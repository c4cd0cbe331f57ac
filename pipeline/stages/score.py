"""Score a submission against a truth CSV the way Kaggle does: prints MAP@5 and how many rows were scored.

Kaggle's rule (SPEC 6): a correct label counts once, at its first position (later repeats of it are skipped), and
labels past the 5th are ignored; so with truth A, `A B C D E`, `A A A A A` and `A B A C A` all score 1.0 and
`B A A` scores 0.5. Rows that repeat a label or hold other than 5 labels are scored, with one warning line naming
them (./run.sh validate rejects such a file). Errors, as on Kaggle: a missing or extra image id, a duplicate
row, a malformed header. The submission's columns are its own header's; the truth file (one image id and its
label per row) has the same column names unless --id-column / --label-column name its own.

example: ./run.sh score submissions/my_sub.csv --truth data/demo/test_truth.csv"""
import sys


def add_arguments(p):
    p.add_argument("submission", help="submission CSV (id and predictions columns, up to 5 labels per row)")
    p.add_argument("--truth", required=True, help="truth CSV: one image id and its label per row")
    p.add_argument("--id-column", help="the truth file's image id column (default: the submission's first column)")
    p.add_argument("--label-column", help="the truth file's label column (default: the submission's second column)")


def run(args):
    from pipeline.retrieval.submission import score_submission

    score, rows, warning = score_submission(args.submission, args.truth, args.id_column, args.label_column)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"MAP@5: {score:.5f} ({rows} rows scored against {args.truth})")
