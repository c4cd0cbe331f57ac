"""Full-scale rehearsal: the competitor's loop at Hotel-ID 2022 scale (3,116 hotels, ~44.7k training and ~5k test
photos of 1024 px), each stage run as `./run.sh` would, with its time, peak memory and disk.

Stages: make-data (once per seed and fraction: reused while its marker matches) -> folds -> cache-images -> one
epoch of a small timm model (packaged ImageNet weights, image cache on, validation as by default) -> embed (gallery,
val, test) -> a six-model ensemble at the 7th-place paper's scale (six 4096-d models: the trained run copied six
times, so six distinct embedding files are read) -> kernel build with its offline check (the kernel embeds the
test photos with all six models in a fresh venv and ranks them against the packaged galleries).

Memory: the peak PSS of the stage's whole process tree (loader and joblib workers included; shared pages split
between the processes that map them), sampled every 0.2 s from /proc, with its split at the peak into anonymous memory
and mapped files (Pss_Anon, Pss_File); and the main process's peak RSS (wait4).
GPU projection (a 16-core H200 machine): a model stage takes the slower of its data work (at most one full decode per
image, at the per-image cost cache-images measured here, over 16 cores) and its model FLOPs at an assumed 35% of the
H200's dense bf16 peak (989 TFLOP/s); any other stage is CPU work, spread over 16 cores instead of this machine's.

Goal (issue 14): peak memory <= 4 GiB for every stage.

usage: python bench/scale.py [--fraction 1.0] [--seed 0] [--size 96]   -> JSON on stdout (progress on stderr)
       --fraction 0.1 runs a tenth of the hotels (a quick rehearsal of the same stages)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOTELS, TRAIN_PER_HOTEL, TEST_PER_HOTEL, PHOTO = 3116, 14.3, 1.6, 1024
H200_BF16, MFU, GPU_CPUS = 989e12, 0.35, 16


def _tree(pid):
    """pid and its descendants, from /proc."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


_PSS_FIELDS = ("Pss:", "Pss_Anon:", "Pss_File:")  # all, anonymous (heap, tensors), file-backed (memmaps, libraries)


def _pss_kb(pid):
    """(Pss, Pss_Anon, Pss_File) of one process in kB: the split says whether a peak is the process's own memory or
    file pages it maps (clean ones the kernel can drop, but a tree-PSS goal counts them)."""
    out = [0, 0, 0]
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            for i, field in enumerate(_PSS_FIELDS):
                if line.startswith(field):
                    out[i] = int(line.split()[1])
    except OSError:
        pass
    return out


def run_stage(name, args, cwd, log):
    """(seconds, peak tree PSS GiB, its (anon, file) split GiB, main RSS GiB, stdout) of `python -m pipeline <args>`;
    a failure stops the bench."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = [0, 0, 0], threading.Event()

    def sample():
        while not done.is_set():
            now = [sum(col) for col in zip(*(_pss_kb(p) for p in _tree(proc.pid)))]
            if now and now[0] > peak[0]:
                peak[:] = now
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        log(f"  {name}: {line.rstrip()}")
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"scale: {name} failed:\n{''.join(lines[-20:])}")
    gib = [kb / 2**20 for kb in peak]
    return time.time() - t0, gib[0], (gib[1], gib[2]), usage.ru_maxrss / 2**20, "".join(lines)


def _du(*paths):
    return sum(f.stat().st_size for p in paths if Path(p).exists() for f in Path(p).rglob("*") if f.is_file()) / 2**30


def flops_per_image(cfg_path, size):
    """Forward FLOPs of one image through the config's model (torch's FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_config
    from pipeline.model.embedder import build_model

    model, _ = build_model(load_config(cfg_path, ["pretrained=false"]), with_weights=False)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=float, default=1.0, help="share of Hotel-ID's 3,116 hotels (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="the small model's input side (default 96)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--work", default=str(ROOT / "data" / "scale-work"), help="runs, cache, kernel (replaced)")
    args = p.parse_args()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    hotels = max(5, round(HOTELS * args.fraction))
    data = ROOT / "data" / f"scale-seed{args.seed}-h{hotels}"
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = work / "r1.yaml"
    cfg.write_text(f"backbone: {args.backbone}\nimage_size: {args.size}\nbatch_size: 32\neval_batch_size: 128\n"
                   f"epochs: 1\nimage_cache: true\nimage_scale: 1.5\nimage_cache_dir: {work / 'cache'}\n"
                   f"data: {data}\nfolds_file: {work / 'folds.csv'}\n")
    models = [cfg] + [work / f"r{i}.yaml" for i in range(2, 7)]
    for m in models[1:]:
        shutil.copy(cfg, m)
    stages, t_all = {}, time.time()

    def stage(name, *cmd, images=0):
        disk0 = _du(data, work)
        seconds, pss, (anon, file), rss, out = run_stage(name, cmd, work, log)
        stages[name] = {"seconds": round(seconds, 1), "peak_tree_pss_gib": round(pss, 2),
                        "peak_anon_gib": round(anon, 2), "peak_file_gib": round(file, 2),
                        "peak_main_rss_gib": round(rss, 2), "disk_added_gib": round(_du(data, work) - disk0, 2),
                        "images": images, "s_per_image": round(seconds / images, 5) if images else None}
        log(f"scale: {name}: {seconds:.0f} s, peak {pss:.2f} GiB ({anon:.2f} anon, {file:.2f} file)")
        return out

    marker = data / ".synth.json"
    if not (marker.is_file() and json.loads(marker.read_text()).get("photo_size") == PHOTO):
        stage("make-data", "make-data", "--out", data, "--seed", args.seed, "--hotels", hotels, "--photo-size", PHOTO,
              "--train-per-hotel", TRAIN_PER_HOTEL, "--test-per-hotel", TEST_PER_HOTEL)
    n_train = sum(1 for _ in (data / "train_images").rglob("*.jpg"))
    n_test = sum(1 for _ in (data / "test_images").glob("*.jpg"))
    stage("folds", "folds", "--data", data, "--out", work / "folds.csv", images=n_train)
    stage("cache-images", "cache-images", cfg, "--size", args.size, images=n_train + n_test)
    stage("train", "train", cfg, images=n_train)
    stage("embed", "embed", cfg, images=n_train + n_test + n_train // 10)
    for i in range(2, 7):
        shutil.copytree(work / "runs" / "r1", work / "runs" / f"r{i}")
    stage("ensemble", "ensemble", *models, images=n_test)
    stage("kernel", "kernel", "scale-kernel", "--models", *models, "--owner", "bench", images=n_test * 6)
    result = {"hotels": hotels, "train_images": n_train, "test_images": n_test, "photo_size": PHOTO,
              "image_size": args.size, "backbone": args.backbone, "stages": stages,
              "peak_gib_max": max(s["peak_tree_pss_gib"] for s in stages.values()),
              "goal_peak_le_4_gib": all(s["peak_tree_pss_gib"] <= 4 for s in stages.values()),
              "total_seconds": round(time.time() - t_all, 1), "gpu_projection": project(stages, cfg, args, work)}
    print(json.dumps(result, indent=1))


def project(stages, cfg, args, work):
    """Each stage's time on a 16-core H200 machine, from the per-image costs measured here (assumptions above)."""
    import pandas as pd

    fwd = flops_per_image(cfg, args.size)
    cpus = len(os.sched_getaffinity(0))
    gpu_rate = {"train": H200_BF16 * MFU / (3 * fwd), "embed": H200_BF16 * MFU / fwd,
                "kernel": H200_BF16 * MFU / fwd}
    metrics = pd.read_csv(work / "runs" / "r1" / "fold0" / "metrics.csv")
    out = {"assumptions": f"{GPU_CPUS} CPU cores for data work (measured here on {cpus}), model FLOPs at "
                          f"{MFU:.0%} of {H200_BF16 / 1e12:.0f} TFLOP/s; forward {fwd / 1e9:.2f} GFLOP/image",
           "train_img_s_here": float(metrics["images_per_sec"].iloc[-1])}
    cache = stages["cache-images"]
    decode = cache["seconds"] * cpus / cache["images"]  # core-seconds to decode and reduce one 1024-px photo
    out["decode_core_s_per_image"] = round(decode, 5)
    for name, st in stages.items():
        if name in gpu_rate:  # data work bounded by a full decode per image (cached stages do less), vs the model
            out[name] = round(max(st["images"] * decode / GPU_CPUS, st["images"] / gpu_rate[name]), 1)
        else:  # CPU work throughout: spread over the GPU machine's cores
            out[name] = round(st["seconds"] * cpus / GPU_CPUS, 1)
    return out


if __name__ == "__main__":
    main()
