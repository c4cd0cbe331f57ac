"""The kernel's run-time projection (pipeline/kernel/runtime.py) for configs not trained here, at a competition's
scale: by default the 7th place's final Hotel-ID 2022 ensemble (m1 m2 m3 m5 m6 with flip TTA) on 5,000 test photos
against the 44,703 training photos on a T4. Prints one JSON object with the arithmetic's parts.

  .venv/bin/python bench/kernel_runtime.py [--models m1 m2 ...] [--accelerator T4] [--gallery 44703] [--tricks ...]"""
import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main():
    from pipeline.config import load_config
    from pipeline.inference.tricks import DEFAULTS, add_trick_arguments, tricks_from_args
    from pipeline.kernel.accelerators import accelerator
    from pipeline.kernel.runtime import project_runs

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["m1", "m2", "m3", "m5", "m6"])
    ap.add_argument("--accelerator", default="T4")
    ap.add_argument("--gallery", type=int, default=44703, help="gallery photos (Hotel-ID 2022: 44,703)")
    ap.add_argument("--tricks", default="--flip", help="inference tricks as ./run.sh kernel takes them")
    args = ap.parse_args()
    tp = argparse.ArgumentParser()
    add_trick_arguments(tp)
    tricks = {**DEFAULTS, **tricks_from_args(tp.parse_args(shlex.split(args.tricks)), len(args.models))}
    from pipeline.core.errors import UserError

    cfgs = [load_config(m) for m in args.models]
    try:
        p = project_runs(cfgs, [c["image_size"] for c in cfgs], tricks, accelerator(args.accelerator), args.gallery)
    except UserError as e:
        sys.exit(f"error: {e}")
    print(json.dumps({"models": [vars(m) for m in p.models], "accelerator": p.accelerator, "images": p.images,
                      "gallery": args.gallery, "model_seconds": round(p.model_s, 1),
                      "decode_seconds": round(p.decode_s, 1), "rank_seconds": round(p.rank_s, 1),
                      "total_seconds": round(p.total_s, 1), "total_hours": round(p.total_s / 3600, 3),
                      "limit_hours": p.limit_s / 3600, "lines": p.lines()}, indent=1))


if __name__ == "__main__":
    main()
