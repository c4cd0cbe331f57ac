"""Submit the pushed kernel to its code competition: the version `./run.sh upload` pushed (kernels/<name>/
pushed.json; Kaggle needs the numeric version), once Kaggle says that version's run is complete. The submission's
id goes to kernels/<name>/submitted.json; `./run.sh status <name> --wait` then prints its score.

example: ./run.sh submit hotel --message 'm1 m2 m3, dba 5,3'"""


def add_arguments(p):
    p.add_argument("name", help="package under kernels/ whose kernel was pushed with ./run.sh upload")
    p.add_argument("--message", metavar="M", help="the submission's description (default: the name, version, models "
                   "and git commit)")
    p.add_argument("--again", action="store_true", help="submit a version that was submitted before (each counts "
                   "against the day's submissions)")


def run(args):
    from pipeline.kaggle.submit import submit

    submit(args.name, args.message, again=args.again)
