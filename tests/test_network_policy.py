"""The network policy where it is wired: every stage through cli.main, with HF_HUB_OFFLINE unset as in a user's shell,
runs with the hub offline unless its job is the network; and the kernel check runs the kernel with its network cut
(`unshare -n`) or says that it cannot."""
import importlib
import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest

from pipeline import cli
from pipeline.core.network import HUB_TIMEOUTS
from pipeline.kernel.check import run_offline
from pipeline.kernel.spec import Package
from pipeline.stages import STAGES

# the stages whose job is the network (README, "Network policy"): written out here rather than read from
# pipeline.stages.NETWORK, so that a compute stage added there fails this test
ONLINE = {"weights", "download", "upload", "submit", "status"}
KEYS = ("HF_HUB_OFFLINE", *HUB_TIMEOUTS)

# what each stage's parser needs to accept a command line; none of it is used (the stage's run() is replaced by one
# that records the environment the CLI hands it)
ARGV = {
    "weights": [], "download": [], "make-data": ["--out", "x"], "folds": ["--data", "x"], "cache-images": [],
    "train": ["m1"], "embed": ["m1"], "ensemble": ["m1"], "ensemble-report": ["m1"],
    "pseudo": ["m1", "--threshold", "0.1"], "show": ["m1"], "search-text": ["demo_clip", "a red bed"],
    "evaluate": [], "compare": ["m1"], "score": ["s.csv", "--truth", "t.csv"], "validate": ["s.csv", "--data", "x"],
    "kernel": ["tiny-k", "--models", "m1"], "upload": ["tiny-k"], "status": ["tiny-k"], "submit": ["tiny-k"],
    "demo": [], "test": [],
}


def _through_cli(monkeypatch, stage, **env):
    """The hub variables stage's run() sees when `./run.sh <stage>` starts in a shell with env (and none other of
    them set)."""
    seen = {}

    def run(args):
        seen.update({k: os.environ.get(k) for k in KEYS}, stage=args.stage)
        return 0

    monkeypatch.setattr(importlib.import_module(STAGES[stage]), "run", run)
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)  # conftest sets HF_HUB_OFFLINE=1: restored after the test
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main([stage, *ARGV[stage]]) == 0 and seen.pop("stage") == stage
    return seen


def test_every_stage_gets_the_policy_through_cli_main(monkeypatch):
    assert set(ARGV) == set(STAGES), "a stage was added or removed: give its command line in ARGV"
    assert ONLINE <= set(STAGES)
    for stage in STAGES:
        seen = _through_cli(monkeypatch, stage)
        if stage in ONLINE:  # the user's own setting (here: none), and the hub's waits bounded
            assert seen == {"HF_HUB_OFFLINE": None, **HUB_TIMEOUTS}, (stage, seen)
        else:  # a missing weights file is an error at once, never a download
            assert seen == {"HF_HUB_OFFLINE": "1", **{k: None for k in HUB_TIMEOUTS}}, (stage, seen)


def test_a_network_stage_keeps_the_users_settings(monkeypatch):
    mine = {"HF_HUB_OFFLINE": "1", "HF_HUB_ETAG_TIMEOUT": "30"}
    assert _through_cli(monkeypatch, "weights", **mine) == {**HUB_TIMEOUTS, **mine}
    assert _through_cli(monkeypatch, "train", HF_HUB_OFFLINE="0")["HF_HUB_OFFLINE"] == "1"


# ------------------------------------------------------------------ the kernel check's network

def _unshare_works():
    return bool(shutil.which("unshare")) and subprocess.run(["unshare", "-n", "true"],
                                                            capture_output=True).returncode == 0


@contextmanager
def _loopback_server():
    """A TCP port on 127.0.0.1 that accepts connections (the kernel's only way out in this test); yields its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


PROBE = """import os, pathlib, socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("network: reached 127.0.0.1:{port}")
except OSError as e:
    print(f"network: cut ({{e.strerror or e}})")
pathlib.Path(os.environ["PIPELINE_OUTPUT_ROOT"], "submission.csv").write_text("image_id,hotel_id\\n")
"""


def _probe_package(pkg, port):
    """kernels/<name>/ in miniature (package.json and one file per part) whose kernel.py connects to port on
    loopback and prints what happened."""
    files = []
    for part in ("models", "code", "kernel"):
        (pkg / part).mkdir(parents=True)
        (pkg / part / "notes.txt").write_text(part)
        files.append({"path": f"{part}/notes.txt", "bytes": len(part)})
    (pkg / "kernel" / "kernel.py").write_text(PROBE.format(port=port))
    Package(["a"], "tester", {"models": "tinyk-models", "code": "tinyk-code", "kernel": "tinyk"},
            "tiny-code-competition", {}, {}, "abc1234", "2026-01-01T00:00:00Z", files=files).write(pkg)
    return pkg


def _check(tmp_path, port):
    pkg = _probe_package(tmp_path / "kernels" / "tiny-k", port)
    (tmp_path / "data").mkdir()
    lines = []
    got = run_offline(pkg, tmp_path / "data", tmp_path / "work", python=sys.executable, log=lines.append)
    assert got.is_file(), lines
    return pkg, lines


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -n` (root, or user namespaces)")
def test_the_kernel_check_cuts_the_network(tmp_path):
    with _loopback_server() as port:
        pkg, lines = _check(tmp_path, port)
        # the same kernel run plainly reaches the server: it is the check that cut it
        plain = subprocess.run([sys.executable, pkg / "kernel" / "kernel.py"], capture_output=True, text=True,
                               env=dict(os.environ, PIPELINE_OUTPUT_ROOT=str(tmp_path)))
    assert plain.stdout == f"network: reached 127.0.0.1:{port}\n", plain.stdout + plain.stderr
    assert "  | network: cut (Network is unreachable)" in lines, lines
    assert not any("unshare" in line for line in lines), lines


@pytest.mark.parametrize("unshare", ["missing", "refused"])
def test_the_kernel_check_says_when_it_cannot_cut_the_network(tmp_path, monkeypatch, unshare):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if unshare == "refused":  # as in a container without CAP_SYS_ADMIN or user namespaces
        (bin_dir / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\n"
                                         "exit 1\n")
        (bin_dir / "unshare").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with _loopback_server() as port:
        _, lines = _check(tmp_path, port)
    assert "kernel check: `unshare -n` is not available here; running with HF_HUB_OFFLINE=1 only" in lines, lines
    assert f"  | network: reached 127.0.0.1:{port}" in lines, lines  # what the line warns of
