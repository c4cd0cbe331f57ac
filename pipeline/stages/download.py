"""Download a competition's files with the official kaggle client into a competition folder: progress while the
archive arrives, then unpacked, loaded (layout auto-detected; counts of train images, classes and test images
printed) and renamed into place, so --out appears only complete (with its .download.json: the competition, every
file and its size). An interrupted download leaves data/.<name>.download/, which the next run resumes; a second
run with everything present does nothing. Offline: one line within seconds.

example: ./run.sh download --out data/hotel-id [--competition hotel-id-to-combat-human-trafficking-2022-fgvc9]"""


def add_arguments(p):
    p.add_argument("--competition", metavar="SLUG",
                   help="the competition (kaggle.com/competitions/SLUG); default: the default config's competition")
    p.add_argument("--out", metavar="DIR", help="the competition folder to make (default data/SLUG)")


def run(args):
    from pipeline.kaggle.download import download

    download(args.competition, args.out)
