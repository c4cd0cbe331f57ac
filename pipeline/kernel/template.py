# The body of a Kaggle kernel written by `./run.sh kernel` (which puts SETTINGS = {...} above this line).
# Internet is off on Kaggle: the pipeline code and the wheels come from the code dataset, the weights and the
# cached gallery embeddings from the models dataset. PIPELINE_INPUT_ROOT / PIPELINE_OUTPUT_ROOT move the roots
# (tests run this script on a laid-out temp dir with the network unshared).
import importlib
import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

T0 = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may try the hub: there is no network
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
INPUT = Path(os.environ.get("PIPELINE_INPUT_ROOT", "/kaggle/input"))
OUTPUT = Path(os.environ.get("PIPELINE_OUTPUT_ROOT", "/kaggle/working"))


def mounted(slug: str, owner: str, kind: str) -> Path:
    """Where Kaggle mounted a dataset or competition: <input>/<slug>, or the newer <input>/<kind>/<owner>/<slug>."""
    for path in (INPUT / slug, INPUT / kind / owner / slug, INPUT / kind / slug):
        if path.is_dir():
            return path
    sys.exit(f"kernel: {slug} is not mounted under {INPUT}; add it to the kernel's inputs (kernel-metadata.json)")


def ensure_packages(wheels: Path) -> None:
    """pip-install (offline, from the packaged wheels) every package that is missing or of another version. pip
    resolves their dependencies too, from the wheels folder only: one missing there stops the kernel here with
    pip's error, not later at an import."""
    need = []
    for dist, version in SETTINGS["requires"].items():
        try:
            have = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            need.append(f"{dist}=={version}")
            print(f"kernel: {dist} {have or 'missing'}, need {version}")
    if need:
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
                            "--no-compile", "--disable-pip-version-check", "-q", *need], capture_output=True, text=True)
        print(r.stdout + r.stderr, end="")
        if r.returncode != 0:
            errors = [x for x in r.stderr.splitlines() if x.startswith("ERROR")] or r.stderr.splitlines() or ["?"]
            sys.exit(f"kernel: pip could not install from {wheels}: {errors[-1].strip()}")
        importlib.invalidate_caches()
        print(f"kernel: installed {', '.join(need)} from {wheels} in {time.time() - t:.1f}s")


def main() -> None:
    owner = SETTINGS["owner"]
    code = mounted(SETTINGS["code_slug"], owner, "datasets")
    models = mounted(SETTINGS["models_slug"], owner, "datasets")
    data = mounted(SETTINGS["competition"], owner, "competitions")
    # PIPELINE_WHEELS: the offline check's wheels of the same versions for its own interpreter
    ensure_packages(Path(os.environ.get("PIPELINE_WHEELS", code / "wheels")))
    sys.path.insert(0, str(code))
    from pipeline.kernel.infer import run

    run(models, data, OUTPUT / "submission.csv", t0=T0)


if __name__ == "__main__":
    main()
