"""Outside data in two stages against a run without it, at the same total epochs, over seeds: per seed the baseline
(demo_lite0, E epochs), stage 1 (demo_extra_stage1: the competition + the outside source, E1 epochs) and stage 2
(demo_extra_stage2: init_from stage 1, the competition's classes, E - E1 epochs), each scored as `ensemble` scores
one run (val and test MAP@5); stage 2 also with the mapped outside images in its ranking gallery
(extra_images=gallery). Prints JSON: each run's scores per seed, their mean ± std, and stage 2's gain over the
baseline paired by seed (stage 1's too). A finished run is reused.

usage (from the repo root, after ./run.sh make-data --out runs/extra/data --seed 0 --extra 250 and
./run.sh folds --data runs/extra/data --out runs/extra/folds.csv):
    python bench/extra_data.py [--root runs/extra] [--seeds 1,2,3] [--epochs 3] [--stage1-epochs 2]"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config, run_dir  # noqa: E402
from pipeline.core.io import read_table  # noqa: E402
from pipeline.experiments.ensemble import ensemble  # noqa: E402
from pipeline.training.loop import train  # noqa: E402


def trained(cfg: dict) -> float:
    """Train the run unless a finished one is there; returns its training seconds (0 when reused)."""
    out = run_dir(cfg)
    metrics = out / "metrics.csv"
    if (out / "best.pt").is_file() and metrics.is_file() and len(read_table(metrics)) >= cfg["epochs"]:
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    train(cfg, log=lambda *a: None)
    return time.time() - t0


def scored(cfg: dict, name: str) -> dict:
    result = ensemble([cfg], name, log=lambda *a: None)["ensemble"]
    return {"val_map5": result["val_map5"], "test_map5": result["test_map5"]}


def seed_runs(root: Path, seed: int, epochs: int, first: int) -> dict:
    """The seed's three runs, trained where needed and scored."""
    runs = root / f"e{epochs}" / f"seed{seed}"  # the baseline's; each split of the epochs its own folder in it
    common = [f"data={root / 'data'}", f"folds_file={root / 'folds.csv'}", f"seed={seed}"]
    base = load_config("demo_lite0", [*common, f"runs_dir={runs}", f"epochs={epochs}"])
    common += [f"runs_dir={runs / f'stage1-{first}'}"]
    outside = f"extra_data=[{root / 'data-extra'}]"
    one = load_config("demo_extra_stage1", [*common, outside, f"epochs={first}"])
    two = load_config("demo_extra_stage2", [*common, f"epochs={epochs - first}",
                                            f"init_from={run_dir(one)}"])
    row = {"seconds": {}}
    for key, cfg in (("baseline", base), ("stage1", one), ("stage2", two)):
        row["seconds"][key] = round(trained(cfg), 1)
        row[key] = scored(cfg, f"extra_bench_{key}_e{epochs}_{first}_s{seed}")
    row["stage2_gallery"] = scored({**two, "extra_data": [str(root / "data-extra")], "extra_images": "gallery"},
                                   f"extra_bench_stage2_gallery_e{epochs}_{first}_s{seed}")
    return row


def summary(rows: dict) -> dict:
    """Mean and sample std over seeds of each run's scores, and of their gains over the baseline by seed."""
    def ms(values):
        return [round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    out = {}
    for key in ("baseline", "stage1", "stage2", "stage2_gallery"):
        out[key] = {m: ms([r[key][m] for r in rows.values()]) for m in ("val_map5", "test_map5")}
    for key in ("stage1", "stage2", "stage2_gallery"):
        out[f"{key}_gain"] = {m: ms([r[key][m] - r["baseline"][m] for r in rows.values()])
                              for m in ("val_map5", "test_map5")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="runs/extra", help="holds data/, data-extra/ and folds.csv; runs go under it")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--epochs", type=int, default=3, help="total epochs: the baseline's, stage 1's + stage 2's")
    ap.add_argument("--stage1-epochs", type=int, default=2, help="stage 1's share of them")
    args = ap.parse_args()
    if not 1 <= args.stage1_epochs < args.epochs:
        sys.exit("error: --stage1-epochs must be at least 1 and below --epochs")
    root = Path(args.root)
    rows = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        rows[seed] = seed_runs(root, seed, args.epochs, args.stage1_epochs)
        print(f"seed {seed}: {json.dumps(rows[seed])}", file=sys.stderr, flush=True)
    print(json.dumps({"epochs": args.epochs, "stage1_epochs": args.stage1_epochs, "seeds": rows,
                      "summary": summary(rows)}, indent=1))


if __name__ == "__main__":
    main()
