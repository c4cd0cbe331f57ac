"""Write a synthetic Hotel-ID-like competition folder (procedural hotel rooms, deterministic per seed).

Each hotel is a procedurally drawn room: colours shared with its "chain" (so colour alone does not
identify it), its own wall and floor textures and its own furniture layout. Every photo is a new
viewpoint of that room (crop, perspective, tilt, lighting and colour cast, sometimes blur, noise or
a 90/180 degree rotation). Writes train_images/<hotel_id>/<image_id>.jpg, train_masks/*.png (red
occlusion rectangles), test_images/*.jpg (each with one red occlusion), sample_submission.csv and
test_truth.csv (true hotel of each test image). The same --seed and --hotels give byte-identical
files. A previous make-data output at --out is replaced; any other non-empty folder is refused.

example: ./run.sh make-data --out data/demo --seed 0
"""
from pipeline.data.synth import DEFAULT_HOTELS


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="folder to write (new, empty, or a previous make-data output)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--hotels", type=int, default=DEFAULT_HOTELS,
                        help=f"number of hotels, at least 5 (default {DEFAULT_HOTELS}: ~2,000 train images, ~20 s)")


def run(args):
    from pipeline.data.synth import make_dataset

    make_dataset(args.out, seed=args.seed, hotels=args.hotels, verbose=True)
