"""`./run.sh kernel`: the package built from two tiny trained runs runs offline (network unshared) as Kaggle would
mount it, and writes exactly the submission `./run.sh ensemble` writes; in an interpreter without the kernel's
packages it installs them from the packaged wheels first. The credential guard refuses what it must."""
import json
import re
import sys

import pytest

from conftest import KERNEL_TRICKS, PYPATH, ROOT, assert_one_line_error, cli, tiny_overrides

FAKE_KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.pypi
def test_package_layout_and_metadata(kernel_package):
    package = kernel_package
    _, pkg = package
    meta = json.loads((pkg / "kernel" / "kernel-metadata.json").read_text())
    assert meta["id"] == "tester/tiny-kernel" and meta["code_file"] == "kernel.py"
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["is_private"] is True
    assert meta["machine_shape"] == "NvidiaTeslaT4"  # not enable_gpu alone: that gives the P100
    assert meta["dataset_sources"] == ["tester/tiny-kernel-models", "tester/tiny-kernel-code"]
    assert meta["competition_sources"] == ["hotel-id-to-combat-human-trafficking-2022-fgvc9"]
    for part, slug in (("models", "tiny-kernel-models"), ("code", "tiny-kernel-code")):
        d = json.loads((pkg / part / "dataset-metadata.json").read_text())
        assert d["id"] == f"tester/{slug}" and d["licenses"] == [{"name": "CC0-1.0"}]
    for m in ("a", "b"):
        files = {p.name for p in (pkg / "models" / m).iterdir()}
        assert files == {"model.safetensors", "config.yaml", "train_config.yaml", "meta.json", "gallery.npy",
                         "gallery.csv", "manifest.json", "centers.npy", "centers.csv", "orientation.pt"}
        from safetensors.torch import load_file

        weights = load_file(str(pkg / "models" / m / "model.safetensors"))
        assert weights and not any(k.startswith(("head.", "optimizer")) for k in weights)
    # what --wheels forces, nothing more: their dependencies are all in Kaggle's image (tests/test_kernel_closure.py)
    wheels = sorted(p.name.split("-")[0] for p in (pkg / "code" / "wheels").glob("*.whl"))
    assert wheels == ["albucore", "albumentations", "stringzilla", "timm"]
    # the code dataset holds whole floors, those inference stands on and the kernel's; the offline check proves it
    # is enough
    code = pkg / "code" / "pipeline"
    assert {p.name for p in code.iterdir()} == {"__init__.py", "core", "config.py", "configs", "data", "model",
                                                "retrieval", "inference", "kernel"}
    for floor in ("core", "data", "model", "retrieval", "inference"):
        shipped = {p.name for p in (code / floor).glob("*.py")}
        assert shipped == {p.name for p in (ROOT / "pipeline" / floor).glob("*.py")}
    assert (code / "kernel" / "infer.py").is_file() and not (code / "kernel" / "template.py").exists()
    package_json = json.loads((pkg / "package.json").read_text())
    assert package_json["sizes"]["code"] == sum(f["bytes"] for f in package_json["files"]
                                                if f["path"].startswith("code/"))
    assert (pkg / "verified.json").is_file()
    assert package_json["target"]["python"] == "3.12" and package_json["target"]["accelerator"] == "T4"


@pytest.mark.pypi
def test_wheels_are_for_the_images_python_and_platform(kernel_package):
    """Kaggle's image is CPython 3.12 on Ubuntu 22.04 x86_64: every wheel in the package listing is built for it or
    pure Python."""
    from packaging.utils import parse_wheel_filename

    listing = json.loads((kernel_package[1] / "package.json").read_text())["wheels"]
    assert listing
    for w in listing:
        tags = parse_wheel_filename(w["file"])[3]
        assert all(t.platform == "any" and t.abi == "none" and t.interpreter.startswith("py3") or
                   t.interpreter == "cp312" and t.abi in ("cp312", "abi3") and
                   re.fullmatch(r"manylinux(_2_(1[7-9]|2\d|3[0-5])|2014)_x86_64", t.platform) for t in tags), w
    assert any(t.interpreter == "cp312" for w in listing for t in parse_wheel_filename(w["file"])[3])


@pytest.mark.pypi
def test_kernel_offline_equals_local_ensemble(kernel_package, trained):
    """The package's own offline check (the kernel_package fixture's, the one offline run of the session): in a new
    venv that holds only Kaggle's baseline the kernel installed its wheels, then wrote exactly the submission
    ./run.sh ensemble writes; with CUDA_VISIBLE_DEVICES pointing at nothing it said so in one line."""
    work, pkg = kernel_package
    tiny, runs = trained
    p = cli("ensemble", runs / "a.yaml", runs / "b.yaml", "--out", "local", *KERNEL_TRICKS,
            *tiny_overrides(tiny, runs, "epochs=1"), cwd=work, env={**PYPATH, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stderr
    text = (work / "kernel.log").read_text()
    assert "timm missing, need" in text and "stringzilla missing, need" in text and "installed " in text, text
    here = "%d.%d" % sys.version_info[:2]
    assert f"this check runs Python {here}: it installs the same versions of stringzilla built for it" in text, text
    assert len(re.findall(r"\| kernel: 2 model\(s\) on the CPU \(CUDA_VISIBLE_DEVICES='' hides every GPU\); "
                          "tricks: ", text)) == 1, text
    # Kaggle's log is no terminal: each model's embedding of the test images (4 turns: --rotate) ends with a line
    done = re.findall(r"\| kernel: embedding (\w+) test \(4 turns\): (\d+)/(\d+) images \(100%\), [\d.]+ img/s, "
                      r"done in [\d.]+s$", text, re.M)
    assert [m for m, k, n in done if k == n] == ["a", "b"], text
    # the check found the kernel's offline submission equal to its own ensemble's (kernel-<name>.csv), byte for byte
    assert re.search(r"its submission equals \S*submissions/kernel-tiny-kernel\.csv$", text, re.M), text
    want = (work / "submissions" / "local.csv").read_bytes()
    assert (work / "submissions" / "kernel-tiny-kernel.csv").read_bytes() == want
    assert len(want.splitlines()) > 1
    # pip installed the pinned versions into the venv (the kernel's `pip install dist==version` succeeded)
    requires = json.loads((pkg / "package.json").read_text())["requires"]
    [installed] = re.findall(r"\| kernel: installed (.*) from ", text)
    assert {f"timm=={requires['timm']}", f"stringzilla=={requires['stringzilla']}"} <= set(installed.split(", "))


def test_guard_refuses_credentials(tmp_path, monkeypatch):
    from pipeline.core import guard
    from pipeline.core.errors import UserError

    monkeypatch.setenv("KAGGLE_KEY", "s3cr3t-value-0123456789")
    secrets = guard.local_secrets()
    cases = {
        "kaggle.json": b'{"username": "someone", "key": "' + FAKE_KEY.encode() + b'"}',
        "notes.txt": b"my key is s3cr3t-value-0123456789, do not share",
        "pair.json": b'{"username": "a", "key": "' + FAKE_KEY.encode() + b'"}',
        "env.sh": b"export KAGGLE_KEY=abcdefabcdefabcdef1234",
        "token.yaml": b"access_token: ya29.abcdefghijklmnopqrstuvwxyz",
    }
    for name, data in cases.items():
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        (d / name).write_bytes(data)
        with pytest.raises(UserError, match=name.replace(".", r"\.")):
            guard.check_tree(d, secrets)
    guard.check_tree(ROOT / "pipeline", secrets)  # our own code names the patterns but holds no value


def test_build_refuses_a_credential_and_writes_nothing(trained, tmp_path, monkeypatch):
    from pipeline.config import load_config
    from pipeline.core.errors import UserError
    from pipeline.kernel.package import build

    tiny, runs = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    cfg = load_config(str(runs / "a.yaml"), tiny_overrides(tiny, runs, "epochs=1"))
    cfg["pretrained_file"] = FAKE_KEY  # a credential that would reach config.yaml
    with pytest.raises(UserError, match=r"config\.yaml: holds this machine's Kaggle credential"):
        build("leaky", [cfg], owner="tester", verify_it=False, wheels=[], log=lambda *a: None)
    assert not (tmp_path / "kernels" / "leaky").exists()
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == []  # the staging folder is gone too


def test_bad_kernel_name_and_missing_owner(trained, tmp_path):
    tiny, runs = trained
    env = dict(PYPATH, KAGGLE_CONFIG_DIR=str(tmp_path), KAGGLE_USERNAME="")
    p = cli("kernel", "Bad_Name", "--models", runs / "a.yaml", "--owner", "x", *tiny_overrides(tiny, runs),
            cwd=tmp_path, env=env)
    assert_one_line_error(p, "kernel name 'Bad_Name'")
    p = cli("kernel", "good-name", "--models", runs / "a.yaml", *tiny_overrides(tiny, runs, "epochs=1"),
            cwd=tmp_path, env=env)
    assert_one_line_error(p, "--owner")
    assert not (tmp_path / "kernels" / "good-name").exists()
