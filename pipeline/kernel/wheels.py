"""The kernel's wheels. Kaggle's image is assumed to provide a declared baseline (kaggle_baseline.txt); everything
else the kernel imports ships in the code dataset: the dependency closure of the kernel's own dists (read from the
metadata installed here, markers evaluated for the target Python on Linux) minus the baseline, each pinned to the
version installed here and downloaded as a wheel. The offline check runs the kernel in baseline_venv(): a new venv
that sees only the baseline, so a dependency missing from the wheels fails here, not first on Kaggle."""
import importlib.metadata
import platform
import subprocess
import sys
import venv
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from pipeline.core.errors import UserError

BASELINE = Path(__file__).with_name("kaggle_baseline.txt")
# the installer the kernel calls: on Kaggle it is part of every Python image, here it joins the check venv's
# baseline so the venv needs no copy of its own
INSTALLER = "pip"


def read_baseline(path: Path = BASELINE) -> dict[str, str]:
    """{canonical name: version} of the baseline file; a line that is not `name==version` is a UserError."""
    pins = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise UserError(f"{path}:{n}: '{line}' is not name==version; write one pin a line")
        pins[canonicalize_name(name)] = version.strip()
    return pins


def target_environment(python_version: str, platforms: Sequence[str]) -> dict:
    """The marker environment of the kernel's machine: Kaggle's Linux image, CPython python_version."""
    machine = "aarch64" if any(p.endswith("aarch64") for p in platforms) else "x86_64"
    return {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": machine,
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def closure(roots: Iterable[str], env: dict, stop: dict[str, str] | None = None,
            stop_source: Path = BASELINE) -> dict[str, str]:
    """{name: installed version} of roots and everything they require in env (extras only where a requirement
    asks for them), not entering the dists in stop ({canonical name: version}, read from stop_source), whose version
    must meet each requirement on it. A dist not installed here is a UserError."""
    stop = stop or {}
    pins, seen = {}, set()
    try:
        todo = [(Requirement(r), None) for r in roots]
    except InvalidRequirement as e:
        raise UserError(f"--wheels: {e}; give the names of installed dists") from None
    while todo:
        req, parent = todo.pop()
        key, extras = canonicalize_name(req.name), frozenset(req.extras)
        if key in stop:
            if not req.specifier.contains(stop[key], prereleases=True):
                raise UserError(f"{parent} needs {req}, but {stop_source} declares {key}=={stop[key]}; update that "
                                f"line if Kaggle's image has a matching {key}, or remove it to ship {key}")
            continue
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            whose = f"{parent} needs {req.name}, which" if parent else f"--wheels {req.name}:"
            raise UserError(f"{whose} is not installed here, so its version is unknown; install requirements.txt "
                            "(or drop it)") from None
        name = dist.metadata["Name"]
        pins[name] = dist.version
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
                todo.append((dep, name))
    return dict(sorted(pins.items(), key=lambda kv: canonicalize_name(kv[0])))


def kernel_closure(roots: Sequence[str], python_version: str, platforms: Sequence[str],
                   baseline: Path = BASELINE) -> dict[str, str]:
    """What the code dataset ships: roots and their dependency closure minus the baseline, at this machine's
    versions."""
    base = read_baseline(baseline)
    for r in roots:
        if canonicalize_name(r) in base:
            raise UserError(f"--wheels {r}: {baseline} says Kaggle's image has it; drop it from --wheels, or "
                            "remove it from that file to ship it")
    return closure(roots, target_environment(python_version, platforms), stop=base, stop_source=baseline)


def fetch(pins: dict[str, str], dest: Path, python_version: str, platforms: Sequence[str]) -> dict[str, Path]:
    """One wheel per pin into dest by pip download (PyPI, or the index pip is configured with): a pure-Python one
    where the dist installed here is pure, else one for the target platform and Python. Returns {name: file}."""
    pyver = python_version.replace(".", "")
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--dest", str(dest), "--python-version", python_version, "-q",
            "--timeout", "10", "--retries", "2"]  # bounded: offline, pip would otherwise wait minutes
    pure = ["--implementation", "py", "--abi", "none", "--platform", "any"]
    binary = ["--implementation", "cp", "--abi", f"cp{pyver}", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        binary += ["--platform", p]
    groups = {True: [], False: []}
    for name, version in pins.items():
        groups[_is_pure(name)].append(f"{name}=={version}")
    for is_pure, specs in groups.items():
        if not specs:
            continue
        r = subprocess.run(base + (pure if is_pure else binary) + specs, capture_output=True, text=True)
        if r.returncode != 0:
            error = ([x for x in r.stderr.splitlines() if x.startswith("ERROR")] or r.stderr.splitlines() or ["?"])
            raise UserError(f"cannot download the kernel's wheels for Python {python_version} "
                            f"{' / '.join(platforms)} ({error[-1].strip()}); check PyPI access or the --platform tags")
    got = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in Path(dest).glob("*.whl")}
    missing = [n for n in pins if canonicalize_name(n) not in got]
    if missing:
        raise UserError(f"pip download gave no wheel of {', '.join(missing)}; check the --platform tags")
    return {n: got[canonicalize_name(n)] for n in pins}


def _is_pure(name: str) -> bool:
    tags = [x.split(":", 1)[1].strip() for x in (importlib.metadata.distribution(name).read_text("WHEEL") or
                                                   "").splitlines() if x.startswith("Tag:")]
    return bool(tags) and all(t.endswith("-none-any") for t in tags)


def baseline_venv(dest: Path, baseline: Path = BASELINE, log: Callable[[str], object] = print) -> Path:
    """A new venv at dest whose only packages are the baseline's dists of this interpreter (and pip): their files
    symlinked into dest/baseline (whole folders where no other dist installed here shares them), which a .pth file
    puts on the venv's path. Returns its python. The baseline must be closed under its own requirements."""
    base = read_baseline(baseline)
    have = {}
    for key, version in base.items():
        try:
            have[key] = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            log(f"kernel check: {key}=={version} of the baseline is not installed here; the check runs without it")
            continue
        if have[key].version != version:
            log(f"kernel check: the baseline says {key}=={version}, this machine has {have[key].version}; "
                "the check runs with this machine's")
    env = target_environment(f"{sys.version_info[0]}.{sys.version_info[1]}", [platform.machine()])  # the venv's
    outside = sorted(set(canonicalize_name(n) for n in closure(list(have), env)) - set(base))
    if outside:
        raise UserError(f"{baseline}: its dists need {', '.join(outside)}, not listed; add them (name==version as "
                        "installed here) or the check venv cannot import the baseline")
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(dest)
    overlay = Path(dest) / "baseline"
    overlay.mkdir()
    _link_files([*have.values(), importlib.metadata.distribution(INSTALLER)], overlay)
    purelib = subprocess.run([str(Path(dest) / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "kernel_baseline.pth").write_text(f"{overlay.resolve()}\n")
    return Path(dest) / "bin" / "python"


def _link_files(dists: list, out: Path) -> None:
    """Symlink the files of dists into out, a folder as a whole where no other dist installed beside them has a
    file in it (so the overlay shows these dists and nothing else)."""
    for d in dists:
        if d.files is None:
            raise UserError(f"{d.metadata['Name']}: installed without a RECORD, so its files are unknown; "
                            "reinstall it with pip")
    wanted = {(Path(d.locate_file("")).resolve(), canonicalize_name(d.metadata["Name"])) for d in dists}
    taken, trees, seen = set(), {}, set()  # taken: (site, folder parts) holding another dist's files
    for d in importlib.metadata.distributions():
        site, name = Path(d.locate_file("")).resolve(), canonicalize_name(d.metadata["Name"] or "")
        if (site, name) in seen:
            continue
        seen.add((site, name))
        for parts in (f.parts for f in d.files or []):
            if not parts or parts[0] == "..":
                continue
            if (site, name) in wanted:
                node = trees.setdefault(site, {})
                for part in parts:
                    node = node.setdefault(part, {})
            else:
                taken.update((site, parts[:i]) for i in range(1, len(parts)))

    def place(site, parts, node, target):
        source = site.joinpath(*parts)
        if not source.exists() and not source.is_symlink():
            return  # a RECORD line whose file is gone (a .pyc never written)
        if (site, parts) not in taken:
            if not target.exists():
                target.symlink_to(source)
            return
        target.mkdir(exist_ok=True)
        for name, child in node.items():
            place(site, parts + (name,), child, target / name)

    for site, tree in trees.items():
        for name, node in tree.items():
            place(site, (name,), node, out / name)
