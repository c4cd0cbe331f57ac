"""The kernel on Kaggle's versions: a venv on this machine's Python holding exactly the dists of
pipeline/kernel/kaggle_baseline.txt at the image's versions (torch 2.10.0, numpy 2.0.2, pandas 2.2.2, timm 1.0.26 ...;
from PyPI, this interpreter's wheels), then a kernel package built from two small runs trained here, run offline in
that venv the way Kaggle runs it (network unshared, its wheels installed by the kernel itself), its submission
compared byte for byte with ./run.sh ensemble's on this machine's versions. Prints one JSON object.

Too heavy for CI: the venv is ~7.6 GB (torch's CUDA 12.8 libraries) and takes ~2-5 minutes to install; it is kept
in .cache/kaggle-image-venv/ (a second run reuses it when its pins are unchanged).

  .venv/bin/python bench/kaggle_image.py [--work DIR] [--tricks "--rotate --upright ..."]"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VENV = ROOT / ".cache" / "kaggle-image-venv"
TINY = ["backbone=test_efficientnet", "pretrained=false", "image_size=32", "embedding_dim=32", "batch_size=8",
        "eval_batch_size=32", "num_workers=0", "epochs=1", "lr=0.05", "tensorboard=false"]
TRICKS = "--rotate --upright --knn-alpha 0.5 --fill blendflip --flip"
# scikit-learn and scipy's neighbours are the image's too, but the kernel's code imports no sklearn: absent here
PROBE = ("import importlib.metadata as m, json\n"
         "def v(d):\n"
         "    try: return m.version(d)\n"
         "    except m.PackageNotFoundError: return None\n"
         "print(json.dumps({d: v(d) for d in ("
         "'torch', 'torchvision', 'timm', 'numpy', 'pandas', 'scipy', 'scikit-learn', 'albumentations', "
         "'opencv-python-headless', 'pillow', 'PyYAML', 'safetensors', 'joblib', 'huggingface_hub')}))")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def image_venv() -> tuple[Path, float]:
    """.cache/kaggle-image-venv with the baseline's dists at the image's versions; (its python, install seconds)."""
    from pipeline.kernel.wheels import BASELINE, INSTALLER, read_baseline

    pins = {n: v.split("+")[0] for n, v in read_baseline().items() if n != INSTALLER}  # PyPI has no +cu128 label
    want = hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]
    python, stamp = VENV / "bin" / "python", VENV / "pins.sha"
    if python.exists() and stamp.is_file() and stamp.read_text() == want:
        return python, 0.0
    t = time.time()
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(f"{n}=={v}\n" for n, v in pins.items()))
    log(f"installing {len(pins)} dists of {BASELINE.name} at the image's versions into {VENV} ...")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", f.name],
                   check=True, stdout=sys.stderr)
    stamp.write_text(want)
    return python, time.time() - t


def cli(*args, cwd, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed: {r.stderr.strip()[-2000:]}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", help="folder for the data, runs and package (default: a temp folder)")
    ap.add_argument("--tricks", default=TRICKS, help=f"inference tricks of the package (default: {TRICKS})")
    args = ap.parse_args()
    t0 = time.time()
    python, install_s = image_venv()
    versions = json.loads(subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True,
                                         check=True).stdout)
    work = Path(args.work or tempfile.mkdtemp(prefix="kaggle-image-"))
    work.mkdir(parents=True, exist_ok=True)
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset
    from pipeline.kernel.check import run_offline

    data = make_dataset(work / "data", seed=3, hotels=10)
    write_folds(load_dataset(data), work / "folds.csv", n_folds=5, seed=1)
    over = [f"data={data}", f"folds_file={work / 'folds.csv'}", f"runs_dir={work / 'runs'}", *TINY]
    (work / "runs").mkdir(exist_ok=True)
    for name, extra in (("a", ""), ("b", "head: cosface\npooling: gem\nseed: 5\n")):
        (work / "runs" / f"{name}.yaml").write_text("# bench config\n" + extra)
        log(f"training {name} ...")
        cli("train", work / "runs" / f"{name}.yaml", *over, cwd=work)
    tricks = shlex.split(args.tricks)
    models = [work / "runs" / "a.yaml", work / "runs" / "b.yaml"]
    cli("ensemble", *models, "--out", "local", *tricks, *over, cwd=work)
    built = cli("kernel", "kaggle-bench", "--models", *models, "--owner", "bench", "--no-verify", *tricks, *over,
                cwd=work)
    pkg = work / "kernels" / "kaggle-bench"
    lines = []
    t = time.time()
    got = run_offline(pkg, data, work / "offline", python=python, log=lines.append)
    kernel_s = time.time() - t
    want = work / "submissions" / "local.csv"
    same = got.is_file() and got.read_bytes() == want.read_bytes()
    print(json.dumps({
        "python": "%d.%d.%d" % sys.version_info[:3], "image_versions": versions,
        "this_machine": json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                                  check=True).stdout),
        "tricks": args.tricks, "venv_install_seconds": round(install_s, 1), "kernel_seconds": round(kernel_s, 1),
        "total_seconds": round(time.time() - t0, 1), "rows": len(want.read_text().splitlines()) - 1,
        "byte_identical": same, "projection": built.stdout.split("run-time projection", 1)[-1].splitlines()[:6],
        "kernel_log": [x.strip() for x in lines if "kernel:" in x][:12]}, indent=1))
    if not same:
        sys.exit(f"the kernel's submission on Kaggle's versions differs from {want}")


if __name__ == "__main__":
    main()
