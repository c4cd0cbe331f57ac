"""The offline check of a kernel package: mount its datasets and a competition folder under a temp input root as
Kaggle does, run kernel.py with the network unshared in a new venv that holds only Kaggle's declared baseline
(kernel/wheels.py), so the kernel installs its wheels there as it will on Kaggle, and compare its submission with
./run.sh ensemble's."""
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.guard import without_credentials
from pipeline.core.io import write_text
from pipeline.kernel import spec


def lay_out_inputs(pkg: Path, data_dir: str | Path, root: Path) -> spec.Package:
    """Mount the package's datasets and the competition folder under root as Kaggle does (<root>/<slug>)."""
    package = spec.Package.read(pkg)
    root.mkdir(parents=True, exist_ok=True)
    for part in spec.DATASETS:
        (root / package.slugs[part]).symlink_to((pkg / part).resolve())
    (root / package.competition).symlink_to(Path(data_dir).resolve())
    return package


def run_offline(pkg: Path, data_dir: str | Path, work: str | Path, python: str | Path | None = None,
                log: Callable[[str], object] = print) -> Path:
    """Run pkg's kernel.py with the network unshared (when `unshare -n` works here) and HF_HUB_OFFLINE=1, on
    data_dir laid out under work/input, with python (default: a new baseline-only venv in work/venv, so the kernel
    installs its wheels into it); returns work/working/submission.csv."""
    from pipeline.kernel.wheels import baseline_venv

    inputs, out = Path(work) / "input", Path(work) / "working"
    package = lay_out_inputs(pkg, data_dir, inputs)
    out.mkdir(parents=True, exist_ok=True)
    if python is None:
        t = time.time()
        # without the shipped dists, so the kernel installs them from its wheels as it does on Kaggle
        python = baseline_venv(Path(work) / "venv", log=log, without=list(package.requires))
        log(f"kernel check: baseline-only venv in {time.time() - t:.1f}s")
    wheels = _wheels_for(python, package, pkg, Path(work), log)
    # pip sees the package's wheels folder and nothing else: none of this machine's pip settings (find-links,
    # extra indexes), no user site-packages; the kernel runs the packaged pipeline, not this checkout's; and it gets
    # no Kaggle credential, as on Kaggle (its output is echoed below)
    env = {k: v for k, v in without_credentials().items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PIPELINE_INPUT_ROOT=str(inputs), PIPELINE_OUTPUT_ROOT=str(out), HF_HUB_OFFLINE="1",
               NO_ALBUMENTATIONS_UPDATE="1", PIP_CONFIG_FILE=os.devnull, PYTHONNOUSERSITE="1")
    if wheels:
        env["PIPELINE_WHEELS"] = str(wheels)
    cmd = [str(python), str((pkg / "kernel" / spec.KERNEL_SCRIPT).resolve())]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True,
                                                  env=env).returncode == 0:
        cmd = ["unshare", "-n"] + cmd
    else:
        log("kernel check: `unshare -n` is not available here; running with HF_HUB_OFFLINE=1 only")
    r = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    for line in (r.stdout + r.stderr).splitlines():
        log(f"  | {line}")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1].strip()
        raise UserError(f"the kernel failed offline (exit {r.returncode}): {last} (its output is above)")
    return out / "submission.csv"


def _wheels_for(python, package: spec.Package, pkg: Path, work: Path, log) -> Path | None:
    """Where the check's interpreter is not the image's, the package's wheels as this interpreter sees them
    (work/wheels): each one it can install, and of each compiled one the same version built for it. A wheel missing
    from the package stays missing. None where the package's own wheels serve."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    from pipeline.kernel.wheels import fetch

    if not package.requires:
        return None
    # one call: the interpreter's X.Y and the wheel tags it installs
    here, *ok = subprocess.run([str(python), "-c", "import sys; from packaging.tags import sys_tags; "
                                "print('%d.%d' % sys.version_info[:2], *sys_tags())"],
                               capture_output=True, text=True, check=True, env=without_credentials()).stdout.split()
    target = package.target.get("python", here)
    if target == here:
        return None
    ok = set(ok)
    out, rebuild = work / "wheels", {}
    out.mkdir(exist_ok=True)
    for whl in (pkg / "code" / "wheels").glob("*.whl"):
        name, version, _, tags = parse_wheel_filename(whl.name)
        if {str(t) for t in tags} & ok:
            (out / whl.name).symlink_to(whl.resolve())
        else:
            rebuild[next(n for n in package.requires if canonicalize_name(n) == name)] = str(version)
    if rebuild:
        log(f"kernel check: the package's wheels are for Python {target}, this check runs Python {here}: it "
            f"installs the same versions of {', '.join(rebuild)} built for it")
        fetch(rebuild, out, here, package.target["platforms"])
    return out


def verify(pkg: Path, cfgs: list[dict], tricks: dict, log: Callable[[str], object] = print) -> None:
    """Run the kernel offline on the configs' data; its submission must equal ./run.sh ensemble's for the same
    models and tricks. Writes pkg/verified.json, which names the build it checked (spec.package_digest)."""
    from pipeline.experiments.ensemble import ensemble

    local = ensemble(cfgs, out_name=f"kernel-{pkg.name}", log=lambda *a: None, tricks=tricks)["submission"]
    if local is None:
        raise UserError(f"{cfgs[0]['data']} has no test images to check the kernel on; use --no-verify")
    with tempfile.TemporaryDirectory() as work:
        t = time.time()
        got = run_offline(pkg, cfgs[0]["data"], work, log=log)
        same = got.is_file() and got.read_bytes() == Path(local).read_bytes()
        seconds = time.time() - t
    if not same:
        raise UserError(f"the kernel's offline submission differs from {local} (./run.sh ensemble); do not upload")
    record = {"package": spec.package_digest(pkg), "data": str(cfgs[0]["data"]), "matches": str(local),
              "seconds": round(seconds, 1)}
    write_text(pkg / spec.VERIFIED_JSON, json.dumps(record, indent=1))
    log(f"kernel check: offline run in {seconds:.1f}s; its submission equals {local}")
