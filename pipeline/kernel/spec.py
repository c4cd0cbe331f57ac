"""The kernel package's layout, shared by the builder (kernel/package.py), the offline check, the client and the
kernel itself (kernel/infer.py): file names, and the typed records behind kernel.json and package.json.

  kernels/<name>/models/   dataset <owner>/<name>-models: kernel.json (KernelSpec); per model MODEL_FILES
  kernels/<name>/code/     dataset <owner>/<name>-code: the pipeline packages inference needs, wheels/,
                           requirements-kernel.txt
  kernels/<name>/kernel/   kernel.py + kernel-metadata.json
  kernels/<name>/package.json (Package), verified.json (the offline check passed), output/ (status)"""
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline import FLOORS
from pipeline.core.errors import UserError
from pipeline.core.io import damaged, file_sha256, read_json

KERNELS_DIR = Path("kernels")
DATASETS = ("models", "code")  # uploaded before the kernel that mounts them
PARTS = DATASETS + ("kernel",)
PACKAGE_JSON, VERIFIED_JSON, KERNEL_JSON = "package.json", "verified.json", "kernel.json"
DATASET_METADATA, KERNEL_METADATA, KERNEL_SCRIPT = "dataset-metadata.json", "kernel-metadata.json", "kernel.py"
REQUIREMENTS = "requirements-kernel.txt"
# the files of one model in the models dataset, beside its cached gallery embeddings (<stem>.npy, <stem>.csv)
WEIGHTS, CONFIG, TRAIN_CONFIG, META, MANIFEST = ("model.safetensors", "config.yaml", "train_config.yaml",
                                                 "meta.json", "manifest.json")
# what of the pipeline the kernel runs: whole floors, every one up to inference (kernel/infer.py's imports stand on
# them) and the kernel floor itself; not reports, text, training, experiments, kaggle or the stages. A floor is a
# folder, or a module beside its data (config.py and configs/). The offline check proves it is enough.
CODE = ("__init__.py", *(f for floor in FLOORS[:FLOORS.index("inference") + 1] + ("kernel",)
                         for f in ((f"{floor}.py", f"{floor}s") if floor == "config" else (floor,))))


@dataclass
class KernelSpec:
    """models/kernel.json: what the kernel computes."""
    models: list
    tricks: dict
    gallery_stem: str
    max_memory: int
    competition: str

    def write(self, models_dir: Path) -> None:
        (Path(models_dir) / KERNEL_JSON).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, models_dir: Path) -> "KernelSpec":
        from pipeline.inference.tricks import tricks_from_json

        spec = _record(cls, Path(models_dir) / KERNEL_JSON)
        spec.tricks = tricks_from_json(spec.tricks)
        return spec


@dataclass
class Package:
    """package.json: every file with its size, the Kaggle slugs, versions and the git commit."""
    models: list
    owner: str
    slugs: dict  # part -> slug
    competition: str
    requires: dict  # dist -> version shipped as a wheel
    tricks: dict
    git_commit: str
    created: str
    sizes: dict = field(default_factory=dict)  # part -> bytes
    wheels: list = field(default_factory=list)  # {file, bytes}
    files: list = field(default_factory=list)  # {path, bytes}
    target: dict = field(default_factory=dict)  # python, platforms, accelerator, projected_seconds

    def ref(self, part: str) -> str:
        """The Kaggle reference <owner>/<slug> of a part."""
        return f"{self.owner}/{self.slugs[part]}"

    def write(self, pkg_dir: Path) -> None:
        (Path(pkg_dir) / PACKAGE_JSON).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, pkg_dir: Path) -> "Package":
        return _record(cls, Path(pkg_dir) / PACKAGE_JSON)


def _record(cls, path: Path):
    """cls from a JSON file; a file of another version or a hand edit is a UserError naming it."""
    fix = "rebuild the package with ./run.sh kernel"
    try:
        return cls(**read_json(path, fix))
    except TypeError as e:  # another version's fields
        raise damaged(path, f"not a {cls.__name__} file of this pipeline: {e}", fix) from None


def check_kernel_name(name: str) -> None:
    """The rule for a kernel name, which every stage that takes one applies: it is a folder under kernels/ and
    Kaggle slugs, so nothing but lower-case letters, digits and inner '-' (no '/', no '..')."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{3,42}[a-z0-9]", name):  # ASCII only: 'é'.islower() holds
        raise UserError(f"kernel name '{name}': use 5-44 lower-case letters, digits and '-' (it becomes the "
                        "Kaggle slugs <name>, <name>-models, <name>-code)")


def package_digest(pkg: Path) -> str:
    """sha256 over what is uploaded of pkg, package.json and every file of its parts (names and bytes): the build
    that verified.json records as checked, so an edit after the check, of any size, is seen."""
    pkg = Path(pkg)
    files = [pkg / PACKAGE_JSON] + sorted(f for part in PARTS for f in (pkg / part).rglob("*") if f.is_file())
    listing = "".join(f"{f.relative_to(pkg).as_posix()}\0{file_sha256(f)}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def aside(pkg: Path) -> Path:
    """Where a rebuild that cannot swap folders in one step keeps the previous kernels/<name> meanwhile."""
    return pkg.with_name(f".{pkg.name}.old")


def restore(pkg: Path) -> None:
    """Undo a rebuild killed between its two renames: the previous package, kept aside, goes back to pkg. Beside
    a pkg (which appears only whole) the copy aside is stale, and goes."""
    old = aside(pkg)
    if not old.is_dir():
        return
    if pkg.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(old, pkg)


def load_package(name: str):
    """(package folder, Package) of kernels/<name>; a missing one is a UserError saying how to build it."""
    check_kernel_name(name)
    pkg = KERNELS_DIR / name
    restore(pkg)
    if not (pkg / PACKAGE_JSON).is_file():
        raise UserError(f"{pkg / PACKAGE_JSON} not found: build the package first "
                        f"(./run.sh kernel {name} --models ...)")
    return pkg, Package.read(pkg)
