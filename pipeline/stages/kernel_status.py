"""Show a pushed kernel's status; when it is complete, download its output (submission.csv, log) to
kernels/<name>/output/.

example: ./run.sh kernel-status hotel"""


def add_arguments(p):
    p.add_argument("name", help="package under kernels/ whose kernel was pushed with ./run.sh upload")


def run(args):
    from pipeline.kaggle.client import status

    status(args.name)
