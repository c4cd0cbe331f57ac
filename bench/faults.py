"""Kill training, embedding and ensembling with SIGKILL at random moments, rerun, and check nothing was lost.

For each stage: one uninterrupted reference run, then --kills runs, each SIGKILLed (its whole process group) at a
random moment, then rerun to completion (train with --resume when a last.pt exists; embed resumes by itself from
the chunks a killed run saved, one batch each here, and counts as resumed when its rerun reports chunks it kept).
Train and ensemble are killed uniformly within the reference's duration. Embed is killed after a random one of the
lines the reference printed as it saved a chunk or a stem, a random part of the way to its next such line (the
last: to its end), counted on the killed run's own lines: its start-up (imports, the model) writes nothing yet is
~70% of its duration and varies by more than the ~0.3 s the embedding takes, so uniform kills all but missed it.
After each kill every artifact on disk is checked: checkpoints load (weights_only), .npy files (saved chunks too)
load, CSV/JSON/YAML parse, and each manifest entry agrees with its files as the pipeline's reader of its kind reads
them (an embeddings stem's rows, the class centers' classes; an entry of another kind counts as corrupted). The
final result must equal the reference: every model tensor of last.pt and best.pt (train), every embeddings file
byte (embed), the submission byte for byte (ensemble). Tiny embedded dataset and timm's test model, on the CPU.

usage (from the repo root): python bench/faults.py [--kills 10] [--seed 0]   -> JSON on stdout"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# 4 epochs: most kills land in training, not imports; chunks of one batch, so a kill lands between saved chunks
TINY = ["backbone=test_efficientnet", "pretrained=false", "image_size=32", "embedding_dim=32", "batch_size=8",
        "eval_batch_size=16", "num_workers=0", "epochs=4", "lr=0.05", "save_every_steps=1", "embed_chunk=16"]
KEPT = re.compile(r"^resuming .*: (\d+) of \d+ chunks kept", re.M)  # embed's line when it resumes a stem
SAVED = re.compile(r"^embedded ")  # embed's line after each chunk and each stem it saves (not its timed progress)


def _cmd(stage, cfg, overrides, *extra):
    return [sys.executable, "-m", "pipeline", stage, str(cfg), *extra, *overrides]


def _run(cmd, kill=None):
    """(seconds, killed, stdout, times of its SAVED lines) of one run; kill=(n, delay): SIGKILL its process group
    delay seconds after its n-th SAVED line (n 0: its start), if it is still running then."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT),
               PYTHONUNBUFFERED="1")  # each line when it happens, to kill after it
    with tempfile.TemporaryFile("w+") as err:  # not a pipe: one left unread could fill and stall the run
        t = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                                text=True)
        lines, marks, killed = [], [], False
        while kill is None or len(marks) < kill[0]:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if SAVED.match(line):
                marks.append(time.time() - t)
        if kill is not None:
            try:
                proc.wait(timeout=kill[1])
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
        lines.append(proc.stdout.read())
        proc.wait()
        seconds = time.time() - t
        if not killed and proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"faults: {' '.join(cmd[3:5])} failed: {err.read().strip().splitlines()[-1:]}")
    return seconds, killed, "".join(lines), marks


def _kill_point(rng, marks, seconds):
    """_run's kill of a run whose reference took `seconds` and printed SAVED lines at `marks`: after a random one
    of them, a random part of the way to the next (the last: to the end); without marks, uniformly from the start."""
    if not marks:
        return 0, rng.uniform(0.0, seconds)
    n = rng.randrange(len(marks))
    return n + 1, rng.uniform(0.0, [*marks[1:], seconds][n] - marks[n])


def _corrupt(run_dir):
    """Artifacts under run_dir that do not load / parse / agree with their manifest."""
    import csv

    import numpy as np
    import torch
    import yaml

    bad = []
    for p in sorted(run_dir.rglob("*")):
        if not p.is_file() or p.name.endswith(".tmp"):
            continue
        try:
            if p.suffix == ".pt":
                torch.load(p, map_location="cpu", weights_only=True)
            elif p.suffix == ".npy":
                np.load(p, mmap_mode="r")
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".yaml":
                yaml.safe_load(p.read_text())
            elif p.suffix == ".csv":
                list(csv.reader(open(p)))
        except Exception:
            bad.append(str(p))
    for manifest in run_dir.rglob("manifest.json"):
        try:
            entries = json.loads(manifest.read_text())
        except ValueError:
            continue
        for stem, entry in entries.items():
            try:
                ok = _entry_ok(manifest.parent, stem, entry)
            except Exception:
                ok = False
            if not ok:
                bad.append(f"{manifest}:{stem}" + (" (an entry of no kind the checker knows)" if ok is None else ""))
    return bad


def _entry_ok(folder, stem, entry):
    """Whether a manifest entry agrees with its files, read by the pipeline's reader of its kind: the class centers'
    (centers.ensure_centers writes it: the head's classes, 0 and no files for a pair head) or a Variant's stem of a
    split (embeddings._save_stem: its rows); None for a stem of neither kind."""
    from pipeline.retrieval.centers import CENTERS, load_centers
    from pipeline.retrieval.embedding_tricks import SPLITS
    from pipeline.retrieval.embeddings import load_split

    if stem == CENTERS:
        return entry["classes"] == (len(load_centers(folder / stem).labels) if entry["classes"] else 0)
    if stem.split(".")[0] in SPLITS:  # a variant's stem is its split's name, then its tricks' ".<part>"s
        return len(load_split(folder, stem)) == entry["rows"]
    return None


def _tensors_equal(a, b):
    import torch

    x = torch.load(a, map_location="cpu", weights_only=True)["model"]
    y = torch.load(b, map_location="cpu", weights_only=True)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _files_equal(a, b, pattern):
    fa, fb = sorted(p.name for p in a.glob(pattern)), sorted(p.name for p in b.glob(pattern))
    return fa == fb and all((a / n).read_bytes() == (b / n).read_bytes() for n in fa)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10, help="interrupted runs per stage")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)

    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset

    work = Path(tempfile.mkdtemp(prefix="faults-"))
    try:
        # enough images that kills land in the work, not the imports
        data = make_dataset(work / "data", seed=3, hotels=40)
        write_folds(load_dataset(data), work / "folds.csv", n_folds=5, seed=1)
        cfg = work / "f.yaml"
        cfg.write_text("# bench/faults.py\n")

        def overrides(runs):
            return [f"data={data}", f"folds_file={work / 'folds.csv'}", f"runs_dir={runs}", *TINY]

        ref = work / "ref"
        run_of = lambda runs: runs / "f" / "fold0"  # noqa: E731
        stages = {
            "train": (lambda runs, resume: _cmd("train", cfg, overrides(runs), *(["--resume"] if resume else [])),
                      lambda runs: None,
                      lambda runs: all(_tensors_equal(run_of(runs) / k, run_of(ref) / k)
                                       for k in ("last.pt", "best.pt"))),
            "embed": (lambda runs, resume: _cmd("embed", cfg, overrides(runs)),
                      lambda runs: shutil.rmtree(run_of(runs) / "embeddings", ignore_errors=True),
                      lambda runs: _files_equal(run_of(runs) / "embeddings", run_of(ref) / "embeddings", "*.np*")
                      and _files_equal(run_of(runs) / "embeddings", run_of(ref) / "embeddings", "*.csv")),
            "ensemble": (lambda runs, resume: _cmd("ensemble", cfg, overrides(runs), "--out", f"faults-{runs.name}"),
                         lambda runs: None,
                         lambda runs: (ROOT / "submissions" / f"faults-{runs.name}.csv").read_bytes()
                         == (ROOT / "submissions" / "faults-ref.csv").read_bytes()),
        }
        report, done = {}, None
        for name, (cmd, prepare, equal) in stages.items():
            seconds, _, _, marks = _run(cmd(ref, False))
            marks = marks if name == "embed" else []
            row = {"reference_seconds": round(seconds, 1), "runs": 0, "killed": 0, "resumed": 0,
                   "artifacts_corrupted": 0, "final_equal": 0, "corrupted_files": [], "kill_seconds": []}
            if name == "embed":  # chunks found on disk after each kill, and those the rerun says it kept
                row.update(chunks_after_kill=[], chunks_kept=[])
            for i in range(args.kills):
                runs = work / f"{name}{i}"
                if done is not None:  # start from the reference's finished earlier stages
                    shutil.copytree(ref, runs)
                prepare(runs)
                n, delay = _kill_point(rng, marks, seconds)
                row["kill_seconds"].append(round([0.0, *marks][n] + delay, 2))  # on the reference's clock
                _, killed, _, _ = _run(cmd(runs, False), kill=(n, delay))
                bad = _corrupt(runs) if runs.exists() else []
                resume = name == "train" and (run_of(runs) / "last.pt").is_file()
                chunks = len(list(run_of(runs).glob("embeddings/*.parts/*.npy")))
                _, _, out, _ = _run(cmd(runs, resume))
                if name == "embed":
                    kept = sum(int(k) for k in KEPT.findall(out))
                    row["chunks_after_kill"].append(chunks)
                    row["chunks_kept"].append(kept)
                    resume = kept > 0
                row["runs"] += 1
                row["killed"] += killed
                row["resumed"] += resume
                row["artifacts_corrupted"] += len(bad)
                row["corrupted_files"] += bad
                row["final_equal"] += bool(equal(runs))
                shutil.rmtree(runs, ignore_errors=True)
                (ROOT / "submissions" / f"faults-{runs.name}.csv").unlink(missing_ok=True)
            report[name] = row
            done = name
        (ROOT / "submissions" / "faults-ref.csv").unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    totals = {k: sum(r[k] for r in report.values()) for k in ("runs", "killed", "resumed", "artifacts_corrupted",
                                                              "final_equal")}
    print(json.dumps({"kills_per_stage": args.kills, "seed": args.seed, "stages": report, "total": totals,
                      # resumes from kept chunks too: a bench whose kills miss the chunks measures nothing there
                      "ok": totals["artifacts_corrupted"] == 0 and totals["final_equal"] == totals["runs"]
                      and (args.kills == 0 or report["embed"]["resumed"] > 0)},
                     indent=1))


if __name__ == "__main__":
    main()
