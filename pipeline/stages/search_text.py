"""Text-to-image search with a clip run: the gallery images that best match a sentence.

The run's text tower encodes the sentence; the gallery is every training image, embedded by the run (cached like
embed's). Prints the top --k images with their classes and cosines and writes a PNG grid (default
<run>/search/<the sentence>.png). The run must be of head=clip (./run.sh train demo_clip).

example: ./run.sh search-text demo_clip "a room with a red bed and two lamps" --data data/demo --k 5"""
from pathlib import Path

from pipeline.config import add_run_set_arguments, load_run_set
from pipeline.core.errors import UserError


def add_arguments(p):
    p.add_argument("run", metavar="RUN", help="a trained clip config (name or .yaml path)")
    p.add_argument("query", metavar="TEXT", help="the sentence to search for (quote it)")
    p.add_argument("--k", type=int, default=5, help="images shown (default 5)")
    p.add_argument("--out", help="PNG path (default <run>/search/<sentence>.png)")
    add_run_set_arguments(p)


def run(args):
    from pipeline.text.retrieval import search_text

    if args.out and Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out}: the picture is a PNG; give a path ending in .png")
    cfg = load_run_set([args.run], args)[0]
    search_text(cfg, args.query, args.k, args.out)
