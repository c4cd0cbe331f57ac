"""Kaggle's Python image as published, and the baseline derived from it (kaggle_baseline.txt): the dists a kernel
may take from the image, at the image's versions, closed under their requirements.

The sources live in docs/kaggle-image/ (sources.txt names the repository, commit and date of each file): the pip
freeze and OS of the Colab runtime release Kaggle's GPU image is built FROM, and Kaggle's Dockerfile, which installs
its own requirements on top without moving a package Colab already has. So the freeze gives the versions and the
OS file the interpreter. `./run.sh kernel --refresh-baseline DIR` rewrites the baseline from a newer set of files."""
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from pipeline.core.errors import UserError
from pipeline.core.guard import without_credentials

SOURCES_DIR = Path(__file__).resolve().parents[2] / "docs" / "kaggle-image"
SOURCES = "sources.txt"
# Ubuntu 22.04's glibc is 2.35, so a wheel tagged manylinux_2_17 ... manylinux_2_35 runs on the image; pip wants
# every tag spelled out
GLIBC = {"Ubuntu 22.04": 35, "Ubuntu 24.04": 39}
PLATFORM_MACHINE = "x86_64"


@dataclass
class Image:
    """What the derivation reads from the sources."""
    python: str  # full version, e.g. 3.12.13
    os: str  # e.g. Ubuntu 22.04.5 LTS
    freeze: dict  # {canonical name: version as frozen, local label included (torch 2.10.0+cu128)}
    names: dict  # {canonical name: the name as frozen}
    sources: list  # lines of sources.txt

    @property
    def python_version(self) -> str:
        return ".".join(self.python.split(".")[:2])

    def platforms(self) -> list[str]:
        return platforms_for(self.os)


def platforms_for(os_name: str) -> list[str]:
    """Wheel platform tags an OS takes, newest first."""
    glibc = next((v for k, v in GLIBC.items() if os_name.startswith(k)), None)
    if glibc is None:
        raise UserError(f"{os_name}: its glibc is not known here; add it to GLIBC in pipeline/kernel/image.py")
    return [f"manylinux_2_{m}_{PLATFORM_MACHINE}" for m in range(glibc, 16, -1)] + [f"manylinux2014_{PLATFORM_MACHINE}"]


def read_image(folder: Path = SOURCES_DIR) -> Image:
    """The image's interpreter, OS and pip freeze from a sources folder; a missing or odd file is a UserError."""
    folder = Path(folder)
    sources = folder / SOURCES
    if not sources.is_file():
        raise UserError(f"{sources} not found: list each source file with its repository, commit and date there")
    lines = [x for x in sources.read_text().splitlines() if x.strip() and not x.startswith("#")]
    freeze_file = _one(folder, "*pip-freeze*.txt")
    os_file = _one(folder, "*os-info*.txt")
    facts = [x for x in os_file.read_text().splitlines() if x.strip() and not x.startswith("#")]
    python = next((x.split()[1] for x in facts if x.startswith("Python ")), None)
    if python is None or not facts:
        raise UserError(f"{os_file}: no 'Python X.Y.Z' line; it should hold `lsb_release -ds; python --version`")
    freeze, names = {}, {}
    for n, line in enumerate(freeze_file.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line or " @ " in line or line.startswith("-"):
            continue  # a direct-URL install has no index version to pin
        name, sep, version = line.partition("==")
        if not sep:
            raise UserError(f"{freeze_file}:{n}: '{line}' is not name==version; give the output of pip freeze")
        freeze[canonicalize_name(name)], names[canonicalize_name(name)] = version.strip(), name.strip()
    return Image(python, facts[0], freeze, names, lines)


def pip_error(stderr: str) -> str:
    """pip's last ERROR line (its reason), else its last line: what a one-line error quotes."""
    return ([x for x in stderr.splitlines() if x.startswith("ERROR")] or stderr.splitlines() or ["?"])[-1].strip()


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise UserError(f"{folder}: expected one file matching {pattern}, found {len(found)}")
    return found[0]


def resolve_closure(image: Image, roots: list[str], timeout: int = 20) -> list[str]:
    """Canonical names of roots and everything they require on the image (its Python and platform), resolved by
    pip against the image's versions (its freeze as constraints), from PyPI's metadata. Needs the network."""
    missing = [r for r in roots if canonicalize_name(r) not in image.freeze]
    if missing:
        raise UserError(f"{', '.join(missing)}: not in the image's pip freeze; they cannot be in the baseline "
                        "(the kernel ships them as wheels)")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        # the index has no local labels (+cu128): PyPI's torch 2.10.0 is the same CUDA 12.8 build
        constraints.write_text("".join(f"{image.names[k]}=={v.split('+')[0]}\n" for k, v in image.freeze.items()))
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t"),
               "--python-version", image.python_version, "--implementation", "cp", "--only-binary=:all:",
               "--timeout", str(timeout), "--retries", "2", "-c", str(constraints)]
        for tag in image.platforms():
            cmd += ["--platform", tag]
        r = subprocess.run(cmd + [f"{image.names[canonicalize_name(x)]}" for x in roots],
                           capture_output=True, text=True, env=without_credentials())
        if r.returncode != 0:
            raise UserError(f"pip could not resolve the baseline against the image's versions "
                            f"({pip_error(r.stderr)}); check PyPI access")
        return sorted(canonicalize_name(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"])


def baseline_text(image: Image, names: list[str], roots: list[str]) -> str:
    """The baseline file: a header naming the sources, the interpreter, then one name==version a line."""
    head = ["# Kaggle's Python image as published, for the kernel: the dists it may take from the image, at the",
            "# image's versions. Derived from docs/kaggle-image/ by `./run.sh kernel --refresh-baseline` (never by",
            "# hand): the roots are what the kernel imports (pipeline/kernel/package.py NEEDS), the rest is their",
            "# closure under the requirements pip resolves for the image's Python and platform. Sources:",
            *[f"#   {x}" for x in image.sources],
            f"# OS: {image.os}", "",
            "# the image's interpreter: wheels are built for it",
            f"python=={image.python}", ""]
    body = [f"{image.names[n]}=={image.freeze[n]}" + ("  # root" if n in {canonicalize_name(r) for r in roots}
                                                      else "") for n in names]
    return "\n".join(head + body) + "\n"


def refresh(folder: Path, out: Path, roots: list[str], log=print) -> Path:
    """Rewrite the baseline file out from the sources in folder (temp file, then rename)."""
    image = read_image(folder)
    names = resolve_closure(image, roots)
    strays = [n for n in names if n not in image.freeze]
    if strays:
        raise UserError(f"{folder}: the image's freeze lacks {', '.join(strays)}, which its dists require; "
                        "is the freeze complete?")
    tmp = Path(out).with_suffix(".tmp")
    tmp.write_text(baseline_text(image, names, roots))
    tmp.replace(out)
    log(f"wrote {out}: Python {image.python}, {len(names)} dists ({len(roots)} roots)")
    return out
