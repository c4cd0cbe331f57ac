"""Write a synthetic Hotel-ID-like competition folder (procedural hotel rooms, deterministic per seed).

Each hotel is a procedurally drawn room: colours shared with its "chain" (so colour alone does not
identify it), its own wall and floor textures and its own furniture layout. Every photo is a new
viewpoint of that room (crop, perspective, tilt, lighting and colour cast, sometimes blur, noise or
a 90/180 degree rotation). Writes train_images/<hotel_id>/<image_id>.jpg, train_masks/*.png (red
occlusion rectangles), test_images/*.jpg (each with one red occlusion), sample_submission.csv and
test_truth.csv (true hotel of each test image). The same --seed and --hotels give byte-identical
files. A previous make-data output at --out is replaced; any other non-empty folder is refused.

--photo-size 1024 writes full-size photos (1024 px on the longer side, e.g. 1024x768): the same views, more pixels.
--train-per-hotel / --test-per-hotel set the mean photos per hotel (Hotel-ID 2022 scale: --hotels 3116
--train-per-hotel 14.3 --test-per-hotel 1.6 gives ~44.7k train and ~5k test photos).

--extra N also writes an outside source beside it, <out>-extra/ (the config's extra_data): N other hotels plus N/2
of these hotels photographed again under other (7-digit) ids, as train_images/<id>/<image>.jpg, and label_map.csv
(extra_label,label) mapping those ids onto these hotels. It draws from its own random streams: the folder at --out
is byte for byte what it is without --extra.

example: ./run.sh make-data --out data/demo --seed 0 [--extra 250]
"""
from pipeline.data.synth import DEFAULT_HOTELS


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="folder to write (new, empty, or a previous make-data output)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--hotels", type=int, default=DEFAULT_HOTELS,
                        help=f"number of hotels, at least 5 (default {DEFAULT_HOTELS}: ~2,000 train images, ~20 s)")
    parser.add_argument("--photo-size", type=int, default=0, metavar="PX",
                        help="longer side of every photo in px (default 0: the demo's 128-192 px)")
    parser.add_argument("--train-per-hotel", type=float, default=0.0, metavar="N",
                        help="mean training photos per hotel (default 0: the demo's ~8)")
    parser.add_argument("--test-per-hotel", type=float, default=0.0, metavar="N",
                        help="mean test photos per hotel (default 0: the demo's ~0.86)")
    parser.add_argument("--extra", type=int, default=0, metavar="N",
                        help="also write <out>-extra/: N outside hotels plus N/2 of these photographed again under "
                             "other ids, with label_map.csv (default 0: none)")


def run(args):
    from pipeline.data.synth import check_extra, extra_folder, make_dataset, make_extra

    if args.extra:  # before the competition folder is written
        check_extra(extra_folder(args.out), args.extra)
    make_dataset(args.out, seed=args.seed, hotels=args.hotels, verbose=True, photo_size=args.photo_size,
                 train_per_hotel=args.train_per_hotel, test_per_hotel=args.test_per_hotel)
    if args.extra:
        make_extra(extra_folder(args.out), seed=args.seed, hotels=args.hotels, extra=args.extra, verbose=True,
                   photo_size=args.photo_size, train_per_hotel=args.train_per_hotel)
