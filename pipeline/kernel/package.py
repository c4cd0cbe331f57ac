"""Build an offline Kaggle kernel package from trained runs (layout: kernel/spec.py): a models dataset, a code
dataset (the pipeline packages inference needs + wheels) and the kernel, written whole or not at all, refusing any
file that holds a Kaggle credential (core/guard.py); then run it offline here (kernel/check.py)."""
import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import run_names
from pipeline.core.errors import UserError
from pipeline.inference.tricks import DEFAULTS
from pipeline.kernel import spec
from pipeline.kernel.spec import KERNELS_DIR, Package, check_kernel_name
from pipeline.retrieval.embeddings import Variant, read_manifest

# what the kernel's code imports (kernel/infer.py and the floors under it), each with the oldest version that code is
# proven on: Kaggle's image, whose versions bench/kaggle_image.py runs the kernel with. A need the image meets
# (kaggle_baseline.txt) is taken from it; any other ships as a wheel of this machine's version with its closure
# minus the baseline (kernel/wheels.py)
NEEDS = ("torch>=2.10", "torchvision>=0.25", "timm>=1.0.26", "numpy>=2.0.2", "pandas>=2.2.2", "scipy>=1.16.3",
         "albumentations>=2.0.8", "opencv-python-headless>=4.13", "pillow>=11.3", "PyYAML>=6.0.3",
         "safetensors>=0.7", "joblib>=1.5.3", "huggingface_hub>=1.11")
LICENSE = "CC0-1.0"


def default_owner() -> str | None:
    """The Kaggle username the client would use (only the username is read; the key never leaves its file)."""
    user = os.environ.get("KAGGLE_USERNAME")
    if user:
        return user
    from pipeline.core.guard import kaggle_json

    return next(kaggle_json("username"), None)


def build(name: str, cfgs: list[dict], tricks: dict | None = None, owner: str | None = None,
          competition: str | None = None, python_version: str | None = None, platforms: Sequence[str] | None = None,
          wheels: Sequence[str] = (), accelerator: str = "T4", p100_confirmed: bool = False, verify_it: bool = True,
          log: Callable[[str], object] = print) -> Path:
    """Write kernels/<name>/ (atomically) and, with verify_it, run it offline on the configs' data. The wheels are
    for the image's Python and platforms (kaggle_baseline.txt) unless python_version / platforms say otherwise;
    wheels names dists to ship even where the image has them. Returns the package folder."""
    from pipeline.core import guard
    from pipeline.kernel.accelerators import accelerator as accelerator_key
    from pipeline.kernel.wheels import baseline_target
    from pipeline.retrieval.runsets import prepare_run

    check_kernel_name(name)
    accelerator = accelerator_key(accelerator, p100_confirmed)
    target = baseline_target()
    python_version, platforms = python_version or target[0], list(platforms or target[1])
    if not cfgs:
        raise UserError("no models given: ./run.sh kernel NAME --models m1 m2 ...")
    tricks = tricks or dict(DEFAULTS)
    owner = owner or default_owner()
    if not owner:
        raise UserError("no Kaggle owner: give --owner USERNAME (or set KAGGLE_USERNAME / ~/.kaggle/kaggle.json)")
    competition = competition or cfgs[0]["competition"]
    if cfgs[0]["search"] != "exact" and "faiss-cpu" not in wheels:  # the kernel ranks as the first run's config
        wheels = (*wheels, "faiss-cpu")
    names = run_names(cfgs)  # m1, or m1/fold0 ... for fold models
    runs = [prepare_run(c, Variant.of(tricks), log=log) for c in cfgs]
    slugs = {"kernel": name, "models": f"{name}-models", "code": f"{name}-code"}
    KERNELS_DIR.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=KERNELS_DIR))
    try:
        _models_dataset(stage / "models", cfgs, runs, tricks, owner, slugs, competition)
        requires = _code_dataset(stage / "code", owner, slugs, wheels, python_version, platforms)
        _kernel(stage / "kernel", owner, slugs, competition, requires, accelerator)
        guard.check_tree(stage)
        projection = _projection(cfgs, runs, tricks, accelerator, names)
        package = _inventory(stage, names, owner, slugs, competition, requires, tricks,
                             dict(python=python_version, platforms=platforms, accelerator=accelerator,
                                  projected_seconds=round(projection.total_s)))
        dest = KERNELS_DIR / name
        install(stage, dest)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"{KERNELS_DIR}: disk full while writing the package ({e.strerror}); the previous "
                        f"kernels/{name} (if any) is intact. Free space and rerun") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for part in spec.PARTS:
        log(f"{dest / part}: {package.sizes[part] / 2**20:.1f} MB")
    for w in package.wheels:
        log(f"  wheel {w['file']}: {w['bytes'] / 2**20:.2f} MB")
    log(f"  wheels: {len(package.wheels)} files, {package.sizes['wheels'] / 2**20:.1f} MB, for Python "
        f"{python_version} {platforms[0]}")
    for line in projection.lines():
        log(line)
    if verify_it:
        from pipeline.kernel.check import verify

        verify(dest, cfgs, tricks, log=log)
    log(f"wrote {dest}; next: ./run.sh upload {name}")
    return dest


def install(stage: Path, dest: Path) -> None:
    """Put the complete package `stage` at dest; the previous one is deleted only once the new one is in place.
    Where the OS can, the two are swapped in one step, so dest is never missing; elsewhere the previous one is renamed
    aside first, and a kill between the two renames leaves it there for spec.restore to put back."""
    spec.restore(dest)
    if dest.exists() and _exchange(stage, dest):
        shutil.rmtree(stage, ignore_errors=True)  # the previous package now
        return
    old = spec.aside(dest)
    if dest.exists():
        dest.rename(old)
    stage.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the OS or filesystem cannot."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def refresh_baseline(folder: str | Path, log: Callable[[str], object] = print) -> Path:
    """Rewrite kaggle_baseline.txt from Kaggle's published image files in folder (kernel/image.py)."""
    from packaging.requirements import Requirement

    from pipeline.kernel.image import refresh
    from pipeline.kernel.wheels import BASELINE, INSTALLER

    return refresh(Path(folder), BASELINE, [Requirement(n).name for n in NEEDS] + [INSTALLER], log=log)


def _models_dataset(root, cfgs, runs, tricks, owner, slugs, competition):
    import torch
    import yaml
    from safetensors.torch import save_file

    from pipeline.config import run_dir
    from pipeline.core import checkpoint
    from pipeline.data.transforms import preprocessing
    from pipeline.retrieval.runsets import every_run_tricks

    folders = [n.replace("/", "-") for n in run_names(cfgs)]  # m1, or m1-fold0 ... for fold models
    for cfg, run, folder in zip(cfgs, runs, folders):
        mdir = root / folder
        mdir.mkdir(parents=True)
        ck_path = run_dir(cfg) / f"{cfg['checkpoint']}.pt"
        state = checkpoint.load(ck_path, cfg)
        # weights only: no optimiser, no head; clones so tied / strided tensors save as plain ones
        save_file({k: v.detach().clone().contiguous() for k, v in state["model"].items()
                   if isinstance(v, torch.Tensor)}, str(mdir / spec.WEIGHTS))
        pre = preprocessing(cfg)  # 'auto' resolved against the timm the gallery was embedded with, not Kaggle's
        pinned = {**cfg, "interpolation": pre.interpolation, "crop_pct": pre.crop_pct}
        (mdir / spec.CONFIG).write_text(yaml.safe_dump(pinned, sort_keys=False))
        (mdir / spec.TRAIN_CONFIG).write_text(yaml.safe_dump(state["config"], sort_keys=False))
        stem = run.stems["gallery"]
        for suffix in (".npy", ".csv"):
            shutil.copyfile(run.dir / f"{stem}{suffix}", mdir / f"{stem}{suffix}")
        manifest = read_manifest(run.dir)
        (mdir / spec.MANIFEST).write_text(json.dumps({stem: manifest[stem]}, indent=1))
        _trick_files(run, cfg, mdir, tricks)
        meta = {"name": cfg["name"], "fold": cfg["fold"], "image_size": state["image_size"], "mean": state["mean"],
                "std": state["std"], "checkpoint": cfg["checkpoint"],
                "checkpoint_sha256": checkpoint.file_hash(ck_path)}
        (mdir / spec.META).write_text(json.dumps(meta, indent=1))
    # every run ranks the test images, as ensemble does: --weights (one per config) repeat over fold models
    spec.KernelSpec(folders, every_run_tricks(tricks, cfgs), runs[0].stems["gallery"], cfgs[0]["max_memory"],
                    competition).write(root)
    _dataset_metadata(root, owner, slugs["models"], f"{slugs['kernel']} models")


def _trick_files(run, cfg, mdir, tricks):
    """What the tricks need beside the weights: the class centers (knn_alpha < 1), the rotation classifier
    (upright: trained here now if the run has none yet)."""
    from pipeline.config import run_dir
    from pipeline.retrieval.centers import CENTERS
    from pipeline.retrieval.orientation import FILE as ORIENTER

    if tricks["knn_alpha"] < 1:
        if not (run.dir / f"{CENTERS}.npy").is_file():
            raise UserError(f"{cfg['name']}: --knn-alpha below 1 needs a classifier head's class centers, and "
                            f"{run.dir} has none (a pair head?): package it without --knn-alpha")
        for suffix in (".npy", ".csv"):
            shutil.copyfile(run.dir / f"{CENTERS}{suffix}", mdir / f"{CENTERS}{suffix}")
    if tricks["upright"]:
        shutil.copyfile(run_dir(cfg) / ORIENTER, mdir / ORIENTER)  # trained by prepare_run for the upright variant


def _dataset_metadata(root, owner, slug, title):
    meta = {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": LICENSE}]}
    (root / spec.DATASET_METADATA).write_text(json.dumps(meta, indent=1))


def _projection(cfgs, runs, tricks, accelerator, names):
    from pipeline.kernel.runtime import project_runs

    entries = [read_manifest(r.dir)[r.stems["gallery"]] for r in runs]  # _intact checked rows against the files
    return project_runs(cfgs, [e["image_size"] for e in entries], tricks, accelerator, entries[0]["rows"], names)


def _code_dataset(root, owner, slugs, wheels, python_version, platforms):
    from pipeline.kernel.wheels import BASELINE, check_tags, fetch, kernel_closure

    _copy_code(root / "pipeline")
    requires = kernel_closure(NEEDS, wheels, python_version, platforms)
    wdir = root / "wheels"
    wdir.mkdir()
    if requires:
        fetch(requires, wdir, python_version, platforms)
        check_tags(wdir, python_version, platforms)
    head = (f"# what the image lacks of {' '.join(NEEDS)}{' plus ' + ' '.join(wheels) if wheels else ''}, and "
            f"their dependency closure minus {BASELINE.name}, for Python {python_version} on {platforms[0]} and "
            "older: one wheel each in wheels/\n")
    (root / spec.REQUIREMENTS).write_text(head + "".join(f"{d}=={v}\n" for d, v in requires.items()))
    _dataset_metadata(root, owner, slugs["code"], f"{slugs['kernel']} code")
    return requires


def _kernel(root, owner, slugs, competition, requires, accelerator):
    from pipeline.kernel.accelerators import ACCELERATORS

    root.mkdir()
    settings = {"owner": owner, "code_slug": slugs["code"], "models_slug": slugs["models"],
                "competition": competition, "requires": requires}
    body = (Path(__file__).parent / "template.py").read_text()
    (root / spec.KERNEL_SCRIPT).write_text(f"SETTINGS = {json.dumps(settings, indent=1)}\n\n{body}")
    meta = {"id": f"{owner}/{slugs['kernel']}", "title": slugs["kernel"], "code_file": spec.KERNEL_SCRIPT,
            "language": "python", "kernel_type": "script", "is_private": True,
            "enable_gpu": bool(ACCELERATORS[accelerator].machine_shape),
            "enable_internet": False, "dataset_sources": [f"{owner}/{slugs['models']}", f"{owner}/{slugs['code']}"],
            "competition_sources": [competition], "kernel_sources": [], "model_sources": []}
    if ACCELERATORS[accelerator].machine_shape:  # enable_gpu alone gives the P100, which Kaggle's torch cannot use
        meta["machine_shape"] = ACCELERATORS[accelerator].machine_shape
    (root / spec.KERNEL_METADATA).write_text(json.dumps(meta, indent=1))


def git_commit() -> str:
    from pipeline.core.guard import without_credentials

    here, env = Path(__file__).parent, without_credentials()
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here, env=env)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, env=env).stdout.strip()
        return (r.stdout.strip() + ("-dirty" if dirty else "")) if r.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _inventory(stage, names, owner, slugs, competition, requires, tricks, target):
    files = [{"path": str(p.relative_to(stage)), "bytes": p.stat().st_size}
             for p in sorted(stage.rglob("*")) if p.is_file()]
    sizes = {part: sum(f["bytes"] for f in files if f["path"].startswith(part + "/")) for part in spec.PARTS}
    wheels = [{"file": Path(f["path"]).name, "bytes": f["bytes"]} for f in files if f["path"].endswith(".whl")]
    sizes["wheels"] = sum(w["bytes"] for w in wheels)  # their total, within code's
    package = Package(names, owner, slugs, competition, requires, tricks, git_commit(),
                      time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), sizes, wheels, files, target)
    package.write(stage)
    return package


def _copy_code(dest):
    """The parts of the pipeline the kernel imports (spec.CODE), not the stages, experiments or training loop; the
    kernel's own template stays out (it becomes kernel.py)."""
    src = Path(__file__).resolve().parent.parent
    for rel in spec.CODE:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if (src / rel).is_dir():
            shutil.copytree(src / rel, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "template.py"))
        else:
            shutil.copyfile(src / rel, dest / rel)
