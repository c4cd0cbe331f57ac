"""The kernel's wheels are its dependency closure minus Kaggle's declared baseline (pipeline/kernel/wheels.py,
kaggle_baseline.txt), and the offline check runs the kernel in a venv that holds only that baseline, so a
dependency wheel missing from the package fails here."""
import importlib.metadata
import json
import shutil
import subprocess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from pipeline.core.errors import UserError
from pipeline.kernel.image import SOURCES_DIR, read_image
from pipeline.kernel.package import NEEDS
from pipeline.kernel.wheels import BASELINE, baseline_target, kernel_closure, read_baseline

from conftest import KERNEL_WHEELS, ROOT


def test_closure_ships_what_the_image_lacks_and_stops_at_the_baseline(tmp_path):
    py, platforms = baseline_target()
    # the image has every need at a version the kernel works with (bench/kaggle_image.py proves it)
    assert kernel_closure(NEEDS, [], py, platforms) == {}
    # forced, albumentations ships alone: its dependencies are in the image
    assert list(kernel_closure(NEEDS, ["albumentations"], py, platforms)) == ["albumentations"]
    # a need the image meets only at an older version ships with what it needs beyond the baseline
    newer = [n if not n.startswith("timm") else "timm>=9" for n in NEEDS]
    assert list(kernel_closure(newer, [], py, platforms)) == ["timm"]
    # without albucore and the string libraries in the image they ship with albumentations
    thin = tmp_path / "baseline.txt"
    thin.write_text("\n".join(x for x in BASELINE.read_text().splitlines()
                              if not x.startswith(("albucore", "stringzilla", "simsimd"))))
    got = {canonicalize_name(n) for n in kernel_closure(NEEDS, ["albumentations"], py, platforms, baseline=thin)}
    assert got == {"albumentations", "albucore", "stringzilla", "simsimd"}
    # markers are the target's: for Python 3.9 albumentations also needs eval-type-backport, not installed here
    with pytest.raises(UserError, match="albumentations needs eval-type-backport, which is not installed here"):
        kernel_closure(NEEDS, ["albumentations"], "3.9", platforms)
    # an image whose numpy is older than the kernel needs: numpy ships
    old = tmp_path / "old.txt"
    old.write_text(BASELINE.read_text().replace("numpy==2.0.2", "numpy==1.0"))
    assert list(kernel_closure(NEEDS, [], py, platforms, baseline=old)) == ["numpy"]
    # a baseline version that a shipped dist's requirement excludes is refused, naming both
    old.write_text(BASELINE.read_text().replace("pydantic==2.12.3", "pydantic==1.0"))
    with pytest.raises(UserError, match=r"albumentations needs pydantic>=[\d.]+, but .*old.txt declares "
                       r"pydantic==1\.0"):
        kernel_closure(NEEDS, ["albumentations"], py, platforms, baseline=old)


def test_baseline_is_kaggles_published_image():
    """Every dist in the baseline is in the image's pip freeze at that version, the interpreter is the image's,
    the kernel's needs are roots of it, and the vendored sources are the shared ones where those are at hand."""
    image = read_image()
    base = read_baseline()
    assert {n: v for n, v in base.items() if image.freeze.get(n) != v} == {}
    assert base["torch"] == "2.10.0+cu128" and base["pandas"] == "2.2.2" and base["numpy"] == "2.0.2"
    assert image.python == "3.12.13" and baseline_target()[0] == "3.12"
    assert "manylinux_2_35_x86_64" in baseline_target()[1]  # Ubuntu 22.04: glibc 2.35
    text = BASELINE.read_text()
    roots = {canonicalize_name(x.split("==")[0]) for x in text.splitlines() if x.endswith("# root")}
    assert roots == {canonicalize_name(Requirement(n).name) for n in NEEDS} | {"pip"}
    for source in image.sources:
        assert source.split()[0] in text  # the header names each source with its commit
    shared = ROOT.parent / "shared" / "kaggle-image"
    if shared.is_dir():
        for f in SOURCES_DIR.iterdir():
            if (shared / f.name).is_file():
                assert f.read_bytes() == (shared / f.name).read_bytes(), f.name
    bad = SOURCES_DIR.parent / "nope"
    with pytest.raises(UserError, match="sources.txt not found"):
        read_image(bad)


def test_read_baseline_refuses_a_line_that_is_no_pin(tmp_path):
    bad = tmp_path / "baseline.txt"
    bad.write_text("# ok\npython==3.12.1\ntorch==2.14.1\nnumpy>=2\n")
    with pytest.raises(UserError, match=r"baseline.txt:4: 'numpy>=2' is not name==version"):
        read_baseline(bad)
    bad.write_text("torch==2.14.1\n")
    with pytest.raises(UserError, match="no python==X.Y.Z or '# OS:' line"):
        baseline_target(bad)


@pytest.mark.pypi
def test_requirements_file_matches_the_wheels(kernel_package):
    _, pkg = kernel_package
    lines = (pkg / "code" / "requirements-kernel.txt").read_text().splitlines()
    assert lines[0].startswith("# what the image lacks of torch>=2.10")
    listed = dict(line.split("==") for line in lines if not line.startswith("#"))
    wheels = {}
    for p in (pkg / "code" / "wheels").glob("*.whl"):
        name, version, *_ = parse_wheel_filename(p.name)
        wheels[canonicalize_name(name)] = str(version)
    assert wheels == {canonicalize_name(n): v for n, v in listed.items()}
    # the closure by hand: the image meets every need and every dependency of the four forced dists (albucore and
    # stringzilla are among albumentations' own), so exactly those four ship, each at this machine's version
    assert sorted(KERNEL_WHEELS) == ["albucore", "albumentations", "stringzilla", "timm"]
    assert {canonicalize_name(n): v for n, v in listed.items()} == {
        n: importlib.metadata.version(n) for n in ("albucore", "albumentations", "stringzilla", "timm")}
    package = json.loads((pkg / "package.json").read_text())
    assert package["requires"] == listed
    assert package["sizes"]["wheels"] == sum(w["bytes"] for w in package["wheels"]) > 0
    assert len(package["wheels"]) == len(wheels)


def test_baseline_venv_sees_the_baseline_and_nothing_else(tmp_path):
    """The image's dists as installed here (this machine's versions: bench/kaggle_image.py runs the image's own),
    less what a package ships (without), and nothing else."""
    from pipeline.kernel.wheels import baseline_venv

    lines = []
    py = baseline_venv(tmp_path / "venv", log=lines.append, without=["timm"])
    assert len(lines) == 1 and "have another version here" in lines[0], lines
    probe = ("import importlib.metadata as m, importlib.util as u, numpy, yaml, pip, albumentations\n"
             "print(m.version('numpy'), m.version('torch'), u.find_spec('torch') is not None)\n"
             "for name in ('timm', 'pytest', 'kaggle', 'matplotlib', 'faiss'):\n"
             "    assert u.find_spec(name) is None, name\n"
             "    try: m.version(name)\n"
             "    except m.PackageNotFoundError: continue\n"
             "    raise AssertionError(name)\n")
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env={"PYTHONNOUSERSITE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [importlib.metadata.version("numpy"), importlib.metadata.version("torch"), "True"]
    r = subprocess.run([str(py), "-c", "import timm"], capture_output=True, text=True)
    assert "No module named 'timm'" in r.stderr


@pytest.mark.pypi
@pytest.mark.parametrize("dist, unlisted", [("stringzilla", False), ("albucore", True)])
def test_check_fails_when_a_dependency_wheel_is_removed(kernel_package, trained, tmp_path, dist, unlisted):
    """The wheel removed from the package; unlisted: from the kernel's list too (a closure that missed it), so
    only pip's resolution of albumentations' requirements can notice."""
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
    with pytest.raises(UserError, match=f"pip could not install .*{dist}==") as e:
        run_offline(copy, tiny / "data", tmp_path / "run", log=lambda *a: None)
    assert "\n" not in str(e.value), str(e.value)
