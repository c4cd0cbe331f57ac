"""`./run.sh upload` and `status` with the real kaggle client against a loopback stand-in for Kaggle's servers
(tests/kaggle_standin.py): create then version the datasets, each version checked against Kaggle's file list (a
file lost on the way is an error and no kernel is pushed), push the kernel and record its version, fetch its output;
no byte sent, package file or log line holds the credential. The helpers here serve test_download and test_submit
too."""
import base64
import io
import json
import shutil
import zipfile

import pytest

from conftest import PYPATH, assert_one_line_error, cli
from kaggle_standin import StandIn

USER, KEY = "tester", "5f0e1d2c3b4a69788796a5b4c3d2e1f0"


def kaggle_env(tmp_path, standin=None, creds=True):
    """Environment for a client process: kaggle.json in a config dir of its own (with creds), no credential from
    this machine, and the stand-in's routing."""
    env = dict(PYPATH, KAGGLE_CONFIG_DIR=str(tmp_path / "kcfg"), HOME=str(tmp_path / "home"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg"), KAGGLE_USERNAME=None, KAGGLE_KEY=None, KAGGLE_API_TOKEN=None)
    for d in ("kcfg", "home", "xdg"):
        (tmp_path / d).mkdir(exist_ok=True)
    if creds:  # the standard place: kaggle.json in the client's config dir
        (tmp_path / "kcfg" / "kaggle.json").write_text(json.dumps({"username": USER, "key": KEY}))
        (tmp_path / "kcfg" / "kaggle.json").chmod(0o600)
    if standin:
        env.update(standin.env())
    return env


def _sent_bytes(standin):
    """Every body the client sent (JSON calls and blobs), zips also unpacked member by member."""
    for method, _, _, body in standin.requests:
        yield body
        if method == "PUT" and body[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(body)) as z:
                for name in z.namelist():
                    yield z.read(name)


def assert_no_credential(standin, runs, folders):
    """No form of the key in any byte sent, in the runs' output or under the folders; the API calls carry it as
    their Authorization header only, and no other request (blobs, archives, output files) carries it at all."""
    forms = [KEY.encode(), base64.b64encode(f"{USER}:{KEY}".encode())]
    sent = list(_sent_bytes(standin))
    assert sent and not any(f in body for body in sent for f in forms)
    basic = "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    assert all({k.lower(): v for k, v in h.items()}.get("authorization") == basic
               for m, _, h, _ in standin.requests if m == "POST")
    assert not any("authorization" in {k.lower() for k in h} for m, _, h, _ in standin.requests if m != "POST")
    for folder in folders:
        for p in folder.rglob("*"):
            assert not (p.is_file() and any(f in p.read_bytes() for f in forms)), p
    for run in runs:
        assert KEY not in run.stdout + run.stderr


def calls(standin, method):
    return [json.loads(b) for m, path, _, b in standin.requests if m == "POST" and path.endswith("/" + method)]


def _copy(kernel_package, tmp_path):
    """The session's package in a project folder of this test's own (upload and status write into it)."""
    _, pkg = kernel_package
    work = tmp_path / "project"
    shutil.copytree(pkg, work / "kernels" / "tiny-kernel")
    return work, work / "kernels" / "tiny-kernel"


@pytest.mark.pypi
def test_upload_creates_verifies_versions_and_pushes_without_leaking(kernel_package, tmp_path):
    work, pkg = _copy(kernel_package, tmp_path)
    with StandIn() as s:
        env = kaggle_env(tmp_path, s)
        first = cli("upload", "tiny-kernel", cwd=work, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        created = calls(s, "CreateDataset")
        assert {(c["ownerSlug"], c["slug"]) for c in created} == {(USER, "tiny-kernel-models"),
                                                                  (USER, "tiny-kernel-code")}
        assert all(c["isPrivate"] is True and c["licenseName"] == "CC0-1.0" for c in created)
        tokens = {f["token"] for c in created for f in c["files"]}
        assert tokens and tokens <= set(s.blobs)  # every file the datasets name was uploaded
        package = json.loads((pkg / "package.json").read_text())
        code = {f["path"][5:]: f["bytes"] for f in package["files"]
                if f["path"].startswith("code/") and f["path"] != "code/dataset-metadata.json"}
        assert s.dataset_files[f"{USER}/tiny-kernel-code"] == code  # what the check compares with, unpacked
        assert "dataset tester/tiny-kernel-code: verified" in first.stdout
        push = calls(s, "SaveKernel")
        assert len(push) == 1
        k = push[0]
        assert k["slug"] == f"{USER}/tiny-kernel" and k["isPrivate"] is True and k["enableGpu"] is True
        assert k["enableInternet"] is False
        assert k["datasetDataSources"] == [f"{USER}/tiny-kernel-models", f"{USER}/tiny-kernel-code"]
        assert k["competitionDataSources"] == ["hotel-id-to-combat-human-trafficking-2022-fgvc9"]
        assert k["text"] == (pkg / "kernel" / "kernel.py").read_text()
        assert "kernel pushed: http://localhost/code/tester/tiny-kernel (version 1)" in first.stdout
        assert json.loads((pkg / "pushed.json").read_text())["version"] == 1

        second = cli("upload", "tiny-kernel", cwd=work, env=env)
        assert second.returncode == 0, second.stdout + second.stderr
        versions = calls(s, "CreateDatasetVersion")
        assert {v["datasetSlug"] for v in versions} == {"tiny-kernel-models", "tiny-kernel-code"}
        assert all(v["body"]["versionNotes"] == f"models a b; git {package['git_commit']}" for v in versions)
        assert len(calls(s, "CreateDataset")) == 2 and len(calls(s, "SaveKernel")) == 2
        assert json.loads((pkg / "pushed.json").read_text())["version"] == 2

        status = cli("status", "tiny-kernel", cwd=work, env=env)
        assert status.returncode == 0, status.stderr
        assert "kernel tester/tiny-kernel version 2: complete" in status.stdout
        assert (pkg / "output" / "submission.csv").read_bytes() == s.output["submission.csv"]
        assert (pkg / "output" / "tiny-kernel.log").read_text() == s.log

        s.fail_blobs = {"kernel.json"}  # its blob upload is refused: the client makes the version without it
        lost = cli("upload", "tiny-kernel", cwd=work, env=env)
        kernel_json = next(f["bytes"] for f in package["files"] if f["path"] == "models/kernel.json")
        assert lost.returncode == 2 and "Traceback" not in lost.stderr
        assert "Upload unsuccessful: kernel.json" in lost.stdout  # the client's only word on it
        error = lost.stderr.strip().splitlines()[-1]  # after the client's progress bars
        assert error.startswith("error: dataset tester/tiny-kernel-models: ") and "partial upload" in error, error
        assert f"(first: kernel.json: {kernel_json:,} B here, missing on Kaggle)" in error
        assert "the kernel was not pushed" in error
        assert len(calls(s, "SaveKernel")) == 2
        assert_no_credential(s, [first, second, status, lost], [pkg])


@pytest.mark.pypi
def test_dry_run_calls_nothing_and_lists_files(kernel_package, tmp_path):
    work, _ = kernel_package
    with StandIn() as s:
        p = cli("upload", "tiny-kernel", "--dry-run", cwd=work, env=kaggle_env(tmp_path, s, creds=False))
        assert p.returncode == 0, p.stderr
        assert s.requests == []
    assert "dataset tester/tiny-kernel-models" in p.stdout and "code/wheels/timm-" in p.stdout
    assert "dry run: nothing was uploaded" in p.stdout


@pytest.mark.pypi
def test_missing_credentials_is_one_line(kernel_package, tmp_path):
    work, _ = kernel_package
    with StandIn() as s:
        p = cli("upload", "tiny-kernel", cwd=work, env=kaggle_env(tmp_path, s, creds=False))
        assert s.requests == []
    assert_one_line_error(p, "no Kaggle credentials", "kaggle.json", "KAGGLE_USERNAME")


@pytest.mark.pypi
def test_unverified_or_missing_package_is_refused(kernel_package, tmp_path):
    work, pkg = kernel_package
    copy = tmp_path / "kernels" / "copy-kernel"
    shutil.copytree(pkg, copy)
    (copy / "verified.json").unlink()
    p = cli("upload", "copy-kernel", "--dry-run", cwd=tmp_path, env=kaggle_env(tmp_path))
    assert_one_line_error(p, "verified.json", "--unverified")
    p = cli("upload", "no-such", cwd=tmp_path, env=kaggle_env(tmp_path))
    assert_one_line_error(p, "kernels/no-such/package.json not found")
    (copy / "code" / "notes.txt").write_text(f"key {KEY}\n")  # the guard runs again before any upload
    (copy / "verified.json").write_text("{}")
    p = cli("upload", "copy-kernel", "--dry-run", cwd=tmp_path, env=dict(kaggle_env(tmp_path), KAGGLE_KEY=KEY))
    assert_one_line_error(p, "notes.txt", "refusing to package it")
    assert KEY not in p.stderr
