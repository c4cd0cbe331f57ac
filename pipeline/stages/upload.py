"""Upload a package built by `./run.sh kernel` with the official kaggle client: each dataset is created the first
time and gets a new version after (its message names the models and the git commit), with the client's progress;
each new version's file list on Kaggle is then compared with the package (names and sizes: a partial version is an
error, and the kernel is not pushed); then the kernel is pushed, its address printed and its version number
recorded in kernels/<name>/pushed.json (for submit and status). --dry-run lists what would go up (files, sizes) and
calls nothing.

Credentials come only from the kaggle client's own places (~/.kaggle/kaggle.json, KAGGLE_USERNAME + KAGGLE_KEY,
KAGGLE_API_TOKEN); none is ever written to kernels/, a log or an error message. Only a package whose offline
check passed (verified.json, written by ./run.sh kernel) is uploaded, unless --unverified.

example: ./run.sh upload hotel --dry-run"""


def add_arguments(p):
    p.add_argument("name", help="package under kernels/ (from ./run.sh kernel NAME ...)")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded; call nothing")
    p.add_argument("--unverified", action="store_true", help="upload even without a passed offline check")


def run(args):
    from pipeline.kaggle.upload import upload

    upload(args.name, dry_run=args.dry_run, unverified=args.unverified)
