"""The pushed kernel's status; once it has run, its output (submission.csv) and log are downloaded to
kernels/<name>/output/; after ./run.sh submit, the submission's state and, once Kaggle has scored it, its score.
--wait polls (a line per poll) until the kernel has ended and the submission is scored; a kernel that failed is
one line naming its log file.

example: ./run.sh status hotel --wait [--interval 60 --timeout 43200]"""


def add_arguments(p):
    from pipeline.kaggle.status import INTERVAL, TIMEOUT

    p.add_argument("name", help="package under kernels/ whose kernel was pushed with ./run.sh upload")
    p.add_argument("--wait", action="store_true", help="poll until the kernel has ended (and a submission of it "
                   "is scored)")
    p.add_argument("--interval", type=float, default=INTERVAL, metavar="S", help=f"seconds between polls "
                   f"(default {INTERVAL:g})")
    p.add_argument("--timeout", type=float, default=TIMEOUT, metavar="S", help=f"give up waiting after S seconds "
                   f"(default {TIMEOUT:g}; the kernel keeps running on Kaggle)")


def run(args):
    from pipeline.core.errors import UserError
    from pipeline.kaggle.status import status

    if args.interval <= 0 or args.timeout <= 0:
        raise UserError(f"--interval {args.interval:g} --timeout {args.timeout:g}: both must be positive seconds")
    status(args.name, wait=args.wait, interval=args.interval, timeout=args.timeout)
