"""Download a competition's files with the official kaggle client into a competition folder: progress while the
archive arrives, then unpacked, loaded (layout auto-detected; counts of train images, classes and test images
printed) and renamed into place, so --out appears only complete (with its .download.json: the competition, every
file and its size). An interrupted download leaves data/.<name>.download/, which the next run resumes; a second
run with everything present does nothing. Offline: one line within seconds. The folder is loaded with --layout and
the config's csv keys (key=value, as for folds); files that do not load yet are kept, with a warning saying so.
The archive must hold exactly the files Kaggle lists (every page of its listing), with their sizes; one that does
not, or that is damaged or cannot be unpacked (an encrypted member, an unknown compression method), is deleted with
what was unpacked of it, so the next run downloads it again. A competition that unpacks to more than
--max-unpacked-gb (default 200) is refused before its download starts.

example: ./run.sh download --out data/hotel-id [--competition hotel-id-to-combat-human-trafficking-2022-fgvc9]
         ./run.sh download --competition happy-whale-and-dolphin --out data/whales csv.label_column=individual_id \
             csv.train_dir=train_images"""


def add_arguments(p):
    from pipeline.kaggle.download import MAX_UNPACKED_GB

    p.add_argument("--competition", metavar="SLUG",
                   help="the competition (kaggle.com/competitions/SLUG); default: the default config's competition")
    p.add_argument("--out", metavar="DIR", help="the competition folder to make (default data/SLUG)")
    p.add_argument("--layout", default=None, help="dataset layout (auto | hotelid | csv | query_gallery)")
    p.add_argument("--max-unpacked-gb", type=float, default=MAX_UNPACKED_GB, metavar="GB",
                   help=f"refuse a competition whose files take more than GB (10^9 bytes) unpacked, as Kaggle lists "
                   f"them (default {MAX_UNPACKED_GB:g})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. csv.label_column=id")


def run(args):
    from pipeline.config import load_config
    from pipeline.kaggle.download import download

    download(args.competition, args.out, load_config("default", args.overrides, layout=args.layout),
             max_unpacked_gb=args.max_unpacked_gb)
