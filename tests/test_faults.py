"""Faults in training and writing: a NaN/inf loss (stop, keeping the last good checkpoint, or skip and count),
CUDA out-of-memory (a one-line hint at batch size and accumulation), and a full disk (one-line error, the
previous artifact intact) - the last on a real, full tmpfs."""
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, assert_one_line_error, tiny_overrides


def _cfg(tiny_data, tmp_path, *extra):
    from pipeline.config import load_config

    (tmp_path / "f.yaml").write_text("# faults\n")
    return load_config(str(tmp_path / "f.yaml"), tiny_overrides(tiny_data, tmp_path / "runs", "epochs=1", *extra))


def _poison_head(monkeypatch, bad_calls, error=None):
    """Training heads whose loss is NaN (or which raise `error`) on the given calls (1-based), real otherwise."""
    import pipeline.model.heads as heads

    real = heads.build_head
    calls = {"n": 0}

    def build(*a, **k):
        head = real(*a, **k)
        forward = head.forward

        def poisoned(e, y):
            loss = forward(e, y)
            if head.training:
                calls["n"] += 1
                if calls["n"] in bad_calls:
                    if error is not None:
                        raise error
                    return loss * float("nan")
            return loss

        head.forward = poisoned
        return head

    monkeypatch.setattr(heads, "build_head", build)
    return calls


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    from pipeline.config import run_dir
    from pipeline.core import checkpoint
    from pipeline.core.errors import UserError
    from pipeline.training.loop import train

    cfg = _cfg(tiny_data, tmp_path, "save_every_steps=1")
    _poison_head(monkeypatch, {3})
    with pytest.raises(UserError, match=r"loss became nan at step 3; \S*last.pt keeps the last good state"):
        train(cfg, log=lambda *a: None)
    ck = checkpoint.load(run_dir(cfg) / "last.pt", cfg)
    assert ck["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_nan_loss_skip_counts_and_finishes(tiny_data, tmp_path, monkeypatch):
    from pipeline.config import run_dir
    from pipeline.core import checkpoint
    from pipeline.training.loop import train

    cfg = _cfg(tiny_data, tmp_path, "nonfinite_loss=skip")
    _poison_head(monkeypatch, {2, 4})
    lines = []
    train(cfg, log=lines.append)
    ck = checkpoint.load(run_dir(cfg) / "last.pt", cfg)
    assert ck["progress"]["skipped"] == 2 and ck["progress"]["epoch"] == 1
    assert sum("batch skipped" in x for x in lines) == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_cuda_out_of_memory_suggests_accumulation(tiny_data, tmp_path, monkeypatch):
    from pipeline.core.errors import UserError
    from pipeline.training.loop import train

    cfg = _cfg(tiny_data, tmp_path, "accum_steps=1")
    _poison_head(monkeypatch, {1}, error=torch.cuda.OutOfMemoryError("CUDA out of memory (injected)"))
    with pytest.raises(UserError, match=r"batch_size=4 accum_steps=2 \(the same effective batch\)"):
        train(cfg, log=lambda *a: None)


def _can_mount_tmpfs():
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -m` and tmpfs mounts (root in a container)")
def test_disk_full_keeps_the_previous_artifact(tiny_data, tmp_path):
    """folds.csv on a 1 MB tmpfs, the rest of it filled; rewriting it must fail cleanly and keep the old one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
set -e
mount -t tmpfs -o size=1m tmpfs {disk}
{sys.executable} -m pipeline folds --data {tiny_data / 'data'} --out {disk / 'folds.csv'} --seed 1 >/dev/null
cp {disk / 'folds.csv'} {tmp_path / 'before.csv'}
dd if=/dev/zero of={disk / 'filler'} bs=4k 2>/dev/null || true
set +e
{sys.executable} -m pipeline folds --data {tiny_data / 'data'} --out {disk / 'folds.csv'} --seed 2 2>{tmp_path / 'err'}
echo $? > {tmp_path / 'rc'}
cmp -s {disk / 'folds.csv'} {tmp_path / 'before.csv'} && echo same > {tmp_path / 'same'}
ls -a {disk} > {tmp_path / 'ls'}
"""
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    proc = subprocess.CompletedProcess([], int((tmp_path / "rc").read_text()), "", (tmp_path / "err").read_text())
    assert_one_line_error(proc, "folds.csv: disk full while writing it", "the previous folds.csv is intact")
    assert (tmp_path / "same").is_file()
    assert sorted((tmp_path / "ls").read_text().split()) == [".", "..", "filler", "folds.csv"]  # no temp left
