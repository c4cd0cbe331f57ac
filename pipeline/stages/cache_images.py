"""Decode every training and test image once into the image cache that train and embed read with image_cache=true.

Each image is reduced so its shorter side is --scale x --size px (a large JPEG is decoded at 1/2, 1/4 or 1/8 scale,
then area-resized) and stored as uint8 arrays in one memory-mapped file per split (--format memmap, the fastest to
read) or as quality-95 JPEGs (--format jpeg, less disk), in parallel worker processes. An entry is keyed by its
source's path, size and mtime and by the cache's shorter side and format: a changed image is re-cached, never read
stale. A killed run keeps what it finished; run it again to go on. train and embed with image_cache=true add any
missing entries themselves, so this stage only does that work ahead of time (e.g. once for several configs).

example: ./run.sh cache-images --data data/demo --size 96 --scale 1.5
         ./run.sh train demo_lite0 image_cache=true image_scale=1.5"""


def add_arguments(p):
    p.add_argument("config", nargs="?", default="default", help="config whose data, size and cache keys to use")
    p.add_argument("--data", help="competition folder (overrides the config's data)")
    p.add_argument("--size", type=int, help="the model's input side in px (default: the config's image_size)")
    p.add_argument("--scale", type=float, help="shorter side = scale x size (default: the config's image_scale, "
                                               "or 1.5 when that is 0)")
    p.add_argument("--format", choices=["memmap", "jpeg"], help="storage (default: the config's, memmap)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. image_cache_dir=DIR")


def run(args):
    from pipeline.config import load_config
    from pipeline.data.image_cache import cache_dataset

    cfg = load_config(args.config, args.overrides, data=args.data, image_size=args.size, image_scale=args.scale,
                      image_cache_format=args.format)
    cfg["image_scale"] = cfg["image_scale"] or 1.5
    cache_dataset(cfg, cfg["image_size"])
