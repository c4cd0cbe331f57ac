"""The kernel's wheels. Kaggle's image provides the baseline (kaggle_baseline.txt, derived from the image as
published by kernel/image.py); a need of the kernel's code (package.NEEDS) the image meets at a version that code
works with is taken from it, and everything else ships in the code dataset: the dependency closure of what must ship
(read from the metadata installed here, markers evaluated for the image's Python on Linux) minus the baseline, each
pinned to the version installed here and downloaded as a wheel for the image's Python and platform. The offline
check runs the kernel in baseline_venv(): a new venv that sees only the baseline's dists, so a dependency missing
from the wheels fails here, not first on Kaggle."""
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
from pipeline.core.guard import without_credentials
from pipeline.kernel.image import pip_error, platforms_for

BASELINE = Path(__file__).with_name("kaggle_baseline.txt")
# the installer the kernel calls: on Kaggle it is part of every Python image, here it joins the check venv's
# baseline so the venv needs no copy of its own
INSTALLER = "pip"
PYTHON = "python"  # the baseline's line naming the image's interpreter


def read_baseline(path: Path = BASELINE) -> dict[str, str]:
    """{canonical name: version} of the baseline file's dists (not its `python==` line); a line that is not
    `name==version` is a UserError."""
    pins = _pins(path)
    pins.pop(PYTHON, None)
    return pins


def _pins(path: Path) -> dict[str, str]:
    """Every `name==version` line of a baseline file, its `python==` line included."""
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


def baseline_target(path: Path = BASELINE) -> tuple[str, list[str]]:
    """The image's Python (X.Y) and the wheel platform tags of its OS, as the baseline names them: the wheels are
    built for these."""
    text, python = Path(path).read_text(), _pins(path).get(PYTHON)
    python = python and ".".join(python.split(".")[:2])
    os_name = next((x.split(":", 1)[1].strip() for x in text.splitlines() if x.startswith("# OS:")), None)
    if not python or not os_name:
        raise UserError(f"{path}: no python==X.Y.Z or '# OS:' line; rewrite it with ./run.sh kernel --refresh-baseline")
    return python, platforms_for(os_name)


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


def kernel_closure(needs: Sequence[str], extra: Sequence[str], python_version: str, platforms: Sequence[str],
                   baseline: Path = BASELINE) -> dict[str, str]:
    """What the code dataset ships, at this machine's versions: each need (a requirement such as timm>=1.0.26) the
    baseline does not meet, the extra dists (shipped even where the image has them), and their dependency closure
    minus the rest of the baseline."""
    base = read_baseline(baseline)
    try:
        reqs = [Requirement(n) for n in needs]
    except InvalidRequirement as e:
        raise UserError(f"{e}: a need is a requirement such as timm>=1.0.26") from None
    roots = [r.name for r in reqs if not (canonicalize_name(r.name) in base and
                                          r.specifier.contains(base[canonicalize_name(r.name)], prereleases=True))]
    roots += [x for x in extra if canonicalize_name(x) not in {canonicalize_name(r) for r in roots}]
    shipped = {canonicalize_name(r) for r in roots}
    stop = {k: v for k, v in base.items() if k not in shipped}
    return closure(roots, target_environment(python_version, platforms), stop=stop, stop_source=baseline)


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
        r = subprocess.run(base + (pure if is_pure else binary) + specs, capture_output=True, text=True,
                           env=without_credentials())
        if r.returncode != 0:
            raise UserError(f"cannot download the kernel's wheels for Python {python_version} {' / '.join(platforms)} "
                            f"({pip_error(r.stderr)}); check PyPI access or the --platform tags")
    got = {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in Path(dest).glob("*.whl")}
    missing = [n for n in pins if canonicalize_name(n) not in got]
    if missing:
        raise UserError(f"pip download gave no wheel of {', '.join(missing)}; check the --platform tags")
    return {n: got[canonicalize_name(n)] for n in pins}


def check_tags(folder: Path, python_version: str, platforms: Sequence[str]) -> None:
    """Every wheel in folder installs on CPython python_version on these platforms (pip's own tag rules), or a
    UserError naming the first that does not."""
    from packaging.tags import compatible_tags, cpython_tags

    version = tuple(int(x) for x in python_version.split("."))
    tags = list(platforms)
    ok = set(cpython_tags(version, platforms=tags)) | set(compatible_tags(version, platforms=tags))
    for whl in sorted(Path(folder).glob("*.whl")):
        if not parse_wheel_filename(whl.name)[3] & ok:
            raise UserError(f"{whl.name}: not installable on CPython {python_version} {platforms[0]}; pip download "
                            "gave the wrong build, check the --platform tags")


def _is_pure(name: str) -> bool:
    tags = [x.split(":", 1)[1].strip() for x in (importlib.metadata.distribution(name).read_text("WHEEL") or
                                                   "").splitlines() if x.startswith("Tag:")]
    return bool(tags) and all(t.endswith("-none-any") for t in tags)


def baseline_venv(dest: Path, baseline: Path = BASELINE, log: Callable[[str], object] = print,
                  without: Sequence[str] = ()) -> Path:
    """A new venv at dest whose only packages are the baseline's dists as installed here, what those need here, and
    pip: their files symlinked into dest/baseline (whole folders where no other dist installed here shares them),
    which a .pth file puts on the venv's path. Returns its python. Where this machine's versions are not the
    image's, the venv has this machine's (bench/kaggle_image.py runs the kernel on the image's own). The dists in
    without (what a package ships) are left out, so a kernel installs them as it would over the image's."""
    base = read_baseline(baseline)
    for name in without:
        base.pop(canonicalize_name(name), None)
    have, other, absent = {}, [], []
    for key, version in base.items():
        try:
            have[key] = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            absent.append(key)
            continue
        if have[key].version != version:
            other.append(f"{key} {have[key].version}")
    env = target_environment(f"{sys.version_info[0]}.{sys.version_info[1]}", [platform.machine()])  # the venv's
    skip = {canonicalize_name(n) for n in without}
    for name in closure(list(have), env):  # what this machine's versions of them need, listed or not
        if canonicalize_name(name) not in skip:
            have.setdefault(canonicalize_name(name), importlib.metadata.distribution(name))
    if other or absent:
        log(f"kernel check: {len(other)} of the baseline's {len(base)} dists have another version here, "
            f"{len(absent)} are not installed; the check runs with this machine's ({', '.join(other[:6])}"
            f"{' ...' if len(other) > 6 else ''})")
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(dest)
    overlay = Path(dest) / "baseline"
    overlay.mkdir()
    _link_files([*have.values(), importlib.metadata.distribution(INSTALLER)], overlay)
    purelib = subprocess.run([str(Path(dest) / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True, env=without_credentials()).stdout.strip()
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
