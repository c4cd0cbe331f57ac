"""Package trained runs as an offline Kaggle kernel: kernels/<name>/ with a models dataset, a code dataset (the
pipeline package + wheels) and the kernel itself, then run the kernel offline on the local data and check its
submission against ./run.sh ensemble's, byte for byte (--no-verify skips that).

  kernels/<name>/models/  dataset <owner>/<name>-models: kernel.json; per model model.safetensors (weights only),
                          config.yaml, train_config.yaml, meta.json, the cached gallery embeddings (.npy, .csv,
                          manifest.json)
  kernels/<name>/code/    dataset <owner>/<name>-code: pipeline/, wheels/, requirements-kernel.txt
  kernels/<name>/kernel/  kernel.py + kernel-metadata.json (internet off, GPU on, private)
  kernels/<name>/package.json  every file with its size, the versions, the git commit; verified.json after a check

Nothing holding a Kaggle credential is written (pipeline/guard.py); the package appears whole or not at all.
Then: ./run.sh upload <name>.

example: ./run.sh kernel hotel --models m1 m2 m3 --data data/demo --fold 0 --owner myname [--dba 5,3]"""
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import scoring
from .errors import UserError

KERNELS_DIR = Path("kernels")
# dists the kernel imports that Kaggle's image may lack or have at another version (the rest - torch, numpy,
# PyYAML, opencv, Pillow, pydantic - it has); pinned to this machine's versions so the kernel runs what was tested
WHEELS = ("timm", "albumentations", "albucore", "safetensors")
DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
LICENSE = "CC0-1.0"


def add_arguments(p):
    from .config import add_run_set_arguments

    p.add_argument("name", help="kernel name: lower-case letters, digits and '-' (also the datasets' prefix)")
    p.add_argument("--models", nargs="+", required=True, metavar="config", help="trained configs (m1 m2 ...)")
    add_run_set_arguments(p)
    p.add_argument("--competition", help="Kaggle competition slug (default: the config's `competition`)")
    p.add_argument("--owner", help="Kaggle user that will own the datasets and kernel (default: the username in "
                   "KAGGLE_USERNAME or kaggle.json)")
    p.add_argument("--python-version", default="3.11", help="the kernel image's Python, for the wheels (3.11)")
    p.add_argument("--platform", action="append", metavar="TAG",
                   help=f"wheel platform tag, repeatable (default: {' '.join(DEFAULT_PLATFORMS)})")
    p.add_argument("--wheels", nargs="*", default=list(WHEELS), metavar="DIST",
                   help=f"installed dists to ship as wheels (default: {' '.join(WHEELS)})")
    p.add_argument("--no-verify", action="store_true", help="skip the offline run of the kernel on --data")
    scoring.add_arguments(p)


def run(args):
    from .config import load_run_set

    cfgs = load_run_set(args.models, args)
    build(args.name, cfgs, tricks=scoring.from_args(args, len(cfgs)), owner=args.owner,
          competition=args.competition, python_version=args.python_version,
          platforms=args.platform or list(DEFAULT_PLATFORMS), wheels=args.wheels, verify_it=not args.no_verify)


def check_name(name):
    ok = 3 <= len(name) <= 44 and all(c.islower() or c.isdigit() or c == "-" for c in name)
    if not ok or name[0] == "-" or name[-1] == "-":
        raise UserError(f"kernel name '{name}': use 3-44 lower-case letters, digits and '-' (it becomes the "
                        "Kaggle slugs <name>, <name>-models, <name>-code)")


def default_owner():
    """The Kaggle username the client would use (only the username is read; the key never leaves its file)."""
    user = os.environ.get("KAGGLE_USERNAME")
    if user:
        return user
    from .guard import kaggle_json

    return next(kaggle_json("username"), None)


def build(name, cfgs, tricks=None, owner=None, competition=None, python_version="3.11", platforms=DEFAULT_PLATFORMS,
          wheels=WHEELS, verify_it=True, log=print):
    """Write kernels/<name>/ (atomically) and, with verify_it, run it offline on the configs' data. Returns the
    package folder."""
    from . import guard
    from .embed import ensure_embeddings

    check_name(name)
    if not cfgs:
        raise UserError("no models given: ./run.sh kernel NAME --models m1 m2 ...")
    tricks = tricks or dict(scoring.DEFAULTS)
    owner = owner or default_owner()
    if not owner:
        raise UserError("no Kaggle owner: give --owner USERNAME (or set KAGGLE_USERNAME / ~/.kaggle/kaggle.json)")
    competition = competition or cfgs[0]["competition"]
    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    variant = {k: tricks[k] for k in scoring.EMBEDDING_TRICKS}
    ens = [ensure_embeddings(c, log=log, **variant) for c in cfgs]
    slugs = {"kernel": name, "models": f"{name}-models", "code": f"{name}-code"}
    KERNELS_DIR.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=KERNELS_DIR))
    try:
        _models_dataset(stage / "models", cfgs, ens, tricks, owner, slugs, competition)
        requires = _code_dataset(stage / "code", owner, slugs, wheels, python_version, platforms)
        _kernel(stage / "kernel", owner, slugs, competition, requires)
        guard.check_tree(stage)
        package = _inventory(stage, names, owner, slugs, competition, requires, tricks)
        dest = KERNELS_DIR / name
        old = dest.with_name(f".{name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        stage.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"{KERNELS_DIR}: disk full while writing the package ({e.strerror}); the previous "
                        f"kernels/{name} (if any) is intact. Free space and rerun") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for part in ("models", "code", "kernel"):
        log(f"{dest / part}: {package['sizes'][part] / 2**20:.1f} MB")
    for w in package["wheels"]:
        log(f"  wheel {w['file']}: {w['bytes'] / 2**20:.2f} MB")
    if verify_it:
        from .kernel_check import verify

        verify(dest, cfgs, tricks, log=log)
    log(f"wrote {dest}; next: ./run.sh upload {name}")
    return dest


def _models_dataset(root, cfgs, ens, tricks, owner, slugs, competition):
    import torch
    import yaml
    from safetensors.torch import save_file

    from . import checkpoint
    from .config import run_dir

    for cfg, e in zip(cfgs, ens):
        mdir = root / cfg["name"]
        mdir.mkdir(parents=True)
        ck_path = run_dir(cfg) / f"{cfg['checkpoint']}.pt"
        state = checkpoint.load(ck_path, cfg)
        # weights only: no optimiser, no head; clones so tied / strided tensors save as plain ones
        save_file({k: v.detach().clone().contiguous() for k, v in state["model"].items()
                   if isinstance(v, torch.Tensor)}, str(mdir / "model.safetensors"))
        (mdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (mdir / "train_config.yaml").write_text(yaml.safe_dump(state["config"], sort_keys=False))
        stem = e["stems"]["gallery"]
        for suffix in (".npy", ".csv"):
            shutil.copyfile(e["dir"] / f"{stem}{suffix}", mdir / f"{stem}{suffix}")
        manifest = json.loads((e["dir"] / "manifest.json").read_text())
        (mdir / "manifest.json").write_text(json.dumps({stem: manifest[stem]}, indent=1))
        meta = {"name": cfg["name"], "fold": cfg["fold"], "image_size": state["image_size"], "mean": state["mean"],
                "std": state["std"], "checkpoint": cfg["checkpoint"], "checkpoint_sha256": checkpoint.file_hash(ck_path)}
        (mdir / "meta.json").write_text(json.dumps(meta, indent=1))
    spec = {"models": [c["name"] for c in cfgs], "tricks": tricks, "gallery_stem": ens[0]["stems"]["gallery"],
            "max_memory": cfgs[0]["max_memory"], "competition": competition}
    (root / "kernel.json").write_text(json.dumps(spec, indent=1))
    _dataset_metadata(root, owner, slugs["models"], f"{slugs['kernel']} models")


def _dataset_metadata(root, owner, slug, title):
    meta = {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": LICENSE}]}
    (root / "dataset-metadata.json").write_text(json.dumps(meta, indent=1))


def _code_dataset(root, owner, slugs, wheels, python_version, platforms):
    import importlib.metadata

    src = Path(__file__).parent
    shutil.copytree(src, root / "pipeline", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "kernel_template.py"))
    requires = {}
    for dist in wheels:
        try:
            requires[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"--wheels {dist}: not installed here, so its version is unknown; install it or drop "
                            "it") from None
    wdir = root / "wheels"
    wdir.mkdir()
    for dist, version in requires.items():
        _fetch_wheel(dist, version, wdir, python_version, platforms)
    (root / "requirements-kernel.txt").write_text("".join(f"{d}=={v}\n" for d, v in requires.items()))
    _dataset_metadata(root, owner, slugs["code"], f"{slugs['kernel']} code")
    return requires


def _fetch_wheel(dist, version, dest, python_version, platforms):
    """One wheel of dist==version into dest by pip download (PyPI): a pure-Python one when there is one, else
    one for the target platform and Python."""
    pyver = python_version.replace(".", "")
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--dest", str(dest), "--python-version", python_version, "-q"]
    pure = ["--implementation", "py", "--abi", "none", "--platform", "any"]
    binary = ["--implementation", "cp", "--abi", f"cp{pyver}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        binary += ["--platform", p]
    errors = ""
    for tags in (pure, binary):
        r = subprocess.run(base + tags + [f"{dist}=={version}"], capture_output=True, text=True)
        if r.returncode == 0:
            return
        errors = (r.stderr.strip().splitlines() or ["?"])[-1]
    raise UserError(f"cannot download a wheel of {dist}=={version} for Python {python_version} "
                    f"{' / '.join(platforms)} ({errors}); check PyPI access or the --platform tags")


def _kernel(root, owner, slugs, competition, requires):
    root.mkdir()
    settings = {"owner": owner, "code_slug": slugs["code"], "models_slug": slugs["models"],
                "competition": competition, "requires": requires}
    body = (Path(__file__).parent / "kernel_template.py").read_text()
    (root / "kernel.py").write_text(f"SETTINGS = {json.dumps(settings, indent=1)}\n\n{body}")
    meta = {"id": f"{owner}/{slugs['kernel']}", "title": slugs["kernel"], "code_file": "kernel.py",
            "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": True,
            "enable_internet": False, "dataset_sources": [f"{owner}/{slugs['models']}", f"{owner}/{slugs['code']}"],
            "competition_sources": [competition], "kernel_sources": [], "model_sources": []}
    (root / "kernel-metadata.json").write_text(json.dumps(meta, indent=1))


def git_commit():
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return (r.stdout.strip() + ("-dirty" if dirty else "")) if r.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _inventory(stage, names, owner, slugs, competition, requires, tricks):
    files = [{"path": str(p.relative_to(stage)), "bytes": p.stat().st_size}
             for p in sorted(stage.rglob("*")) if p.is_file()]
    sizes = {part: sum(f["bytes"] for f in files if f["path"].startswith(part + "/")) for part in slugs}
    wheels = [{"file": Path(f["path"]).name, "bytes": f["bytes"]} for f in files if f["path"].endswith(".whl")]
    package = {"models": names, "owner": owner, "slugs": slugs, "competition": competition, "requires": requires,
               "tricks": tricks, "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sizes": sizes, "wheels": wheels, "files": files}
    (stage / "package.json").write_text(json.dumps(package, indent=1))
    return package
