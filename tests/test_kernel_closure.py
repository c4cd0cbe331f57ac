"""The kernel's wheels are its dependency closure minus Kaggle's declared baseline (pipeline/kernel/wheels.py,
kaggle_baseline.txt), and the offline check runs the kernel in a venv that holds only that baseline, so a
dependency wheel missing from the package fails here."""
import json
import shutil
import subprocess

import pytest
from packaging.utils import canonicalize_name, parse_wheel_filename

from pipeline.core.errors import UserError
from pipeline.kernel.package import DEFAULT_PLATFORMS, WHEELS
from pipeline.kernel.wheels import BASELINE, closure, kernel_closure, read_baseline, target_environment

from conftest import ROOT


def test_closure_follows_requirements_markers_and_stops_at_the_baseline(tmp_path):
    got = {canonicalize_name(n) for n in kernel_closure(["albumentations"], "3.11", DEFAULT_PLATFORMS)}
    assert {"albumentations", "albucore", "stringzilla", "simsimd", "pydantic", "pydantic-core"} <= got
    assert not got & {"numpy", "scipy", "pyyaml", "opencv-python-headless", "typing-extensions"}
    assert not got & set(read_baseline())
    # safetensors requires nothing but through extras, which nobody asks for here
    assert list(kernel_closure(["safetensors"], "3.11", DEFAULT_PLATFORMS)) == ["safetensors"]
    # markers are the target's: for Python 3.9 albumentations also needs eval-type-backport, not installed here
    with pytest.raises(UserError, match="albumentations needs eval-type-backport, which is not installed here"):
        kernel_closure(["albumentations"], "3.9", DEFAULT_PLATFORMS)
    with pytest.raises(UserError, match="--wheels numpy: .*kaggle_baseline.txt says Kaggle's image has it"):
        kernel_closure(["timm", "numpy"], "3.11", DEFAULT_PLATFORMS)
    # a baseline version that a shipped dist's requirement excludes is refused, naming both
    old = tmp_path / "baseline.txt"
    old.write_text(BASELINE.read_text().replace("numpy==2.4.6", "numpy==1.0"))
    with pytest.raises(UserError, match=r"needs numpy>=1\.24\.4, but .*baseline.txt declares numpy==1\.0"):
        kernel_closure(["albumentations"], "3.11", DEFAULT_PLATFORMS, baseline=old)


def test_baseline_is_closed_and_pinned_as_tested_here(tmp_path):
    import importlib.metadata

    base = read_baseline()
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    for name, version in base.items():
        assert importlib.metadata.version(name) == version, name
        assert pins.get(name, version) == version, name
    needed = {canonicalize_name(n) for n in closure(base, target_environment("3.11", DEFAULT_PLATFORMS))}
    assert needed == set(base)
    bad = tmp_path / "baseline.txt"
    bad.write_text("# ok\ntorch==2.14.1\nnumpy>=2\n")
    with pytest.raises(UserError, match=r"baseline.txt:3: 'numpy>=2' is not name==version"):
        read_baseline(bad)


def test_requirements_file_matches_the_wheels(kernel_package):
    _, pkg = kernel_package
    lines = (pkg / "code" / "requirements-kernel.txt").read_text().splitlines()
    assert lines[0].startswith("# timm albumentations safetensors and their dependency closure")
    listed = dict(line.split("==") for line in lines if not line.startswith("#"))
    wheels = {}
    for p in (pkg / "code" / "wheels").glob("*.whl"):
        name, version, *_ = parse_wheel_filename(p.name)
        wheels[canonicalize_name(name)] = str(version)
    assert wheels == {canonicalize_name(n): v for n, v in listed.items()}
    assert listed == kernel_closure(WHEELS, "3.11", DEFAULT_PLATFORMS)
    package = json.loads((pkg / "package.json").read_text())
    assert package["requires"] == listed
    assert package["sizes"]["wheels"] == sum(w["bytes"] for w in package["wheels"]) > 0
    assert len(package["wheels"]) == len(wheels)


def test_baseline_venv_sees_the_baseline_and_nothing_else(tmp_path):
    from pipeline.kernel.wheels import baseline_venv

    py = baseline_venv(tmp_path / "venv", log=lambda *a: None)
    probe = ("import importlib.metadata as m, importlib.util as u, numpy, yaml, pip\n"
             "print(m.version('numpy'), m.version('torch'), u.find_spec('torch') is not None)\n"
             "for name in ('timm', 'pydantic', 'stringzilla', 'pytest', 'kaggle', 'matplotlib'):\n"
             "    assert u.find_spec(name) is None, name\n"
             "    try: m.version(name)\n"
             "    except m.PackageNotFoundError: continue\n"
             "    raise AssertionError(name)\n")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env={"PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0, r.stderr
    base = read_baseline()
    assert r.stdout.split() == [base["numpy"], base["torch"], "True"]
    r = subprocess.run([str(py), "-c", "import timm"], capture_output=True, text=True)
    assert "No module named 'timm'" in r.stderr


@pytest.mark.parametrize("dist, unlisted", [("stringzilla", False), ("simsimd", True)])
def test_check_fails_when_a_dependency_wheel_is_removed(kernel_package, trained, tmp_path, dist, unlisted):
    """The wheel removed from the package; unlisted: from the kernel's list too (a closure that missed it), so
    only pip's resolution of albucore's requirements can notice."""
    from pipeline.kernel.check import run_offline

    _, pkg = kernel_package
    tiny, _ = trained
    copy = tmp_path / "pkg"
    shutil.copytree(pkg, copy)
    removed = list((copy / "code" / "wheels").glob(f"{dist}-*.whl"))
    assert len(removed) == 1
    removed[0].unlink()
    if unlisted:
        script = copy / "kernel" / "kernel.py"
        head, body = script.read_text().split("\n\n", 1)
        settings = json.loads(head.removeprefix("SETTINGS = "))
        del settings["requires"][dist]
        script.write_text(f"SETTINGS = {json.dumps(settings)}\n\n{body}")
    with pytest.raises(UserError, match=f"pip could not install .*{dist}{'>=' if unlisted else '=='}") as e:
        run_offline(copy, tiny / "data", tmp_path / "run", log=lambda *a: None)
    assert "\n" not in str(e.value), str(e.value)
