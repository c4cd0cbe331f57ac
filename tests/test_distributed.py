"""Several processes, one result: DDP training under torchrun (gloo on this CPU) follows the one-process run, resumes
with any number of processes, and sharded embedding writes the one-process files byte for byte."""
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ddp_heads_worker as worker
import pytest
import torch

from conftest import assert_one_line_error, cli, tiny_overrides

WORLD = 2


@pytest.fixture(scope="module")
def ddp_heads(tmp_path_factory):
    """Every head's loss and gradients from 2 processes under torchrun, each holding half of the batch."""
    out = tmp_path_factory.mktemp("heads") / "ddp.pt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
                        str(Path(__file__).parent / "ddp_heads_worker.py"), str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", worker.NAMES)
def test_every_head_under_ddp_gives_the_one_process_loss_and_gradients(name, ddp_heads):
    # the gathered loss and DDP's averaged gradients equal those of the whole batch in one process
    step = worker.step(name)
    x, y = worker.batch(name)
    loss = step(x, y)
    loss.backward()
    want = worker.grads(step)
    has_head = any(True for _ in step.head.parameters())
    assert "model.weight" in want and any(n.startswith("head.") for n in want) == has_head
    got = ddp_heads[name]
    assert got["world"] == WORLD
    assert torch.allclose(got["loss"], loss.detach(), rtol=1e-6, atol=1e-6)
    assert got["grads"].keys() == want.keys()
    for n in want:
        assert torch.allclose(got["grads"][n], want[n], rtol=1e-5, atol=1e-6), (n, got["grads"][n], want[n])


# BN-free (a ViT with a linear neck; torch's SyncBatchNorm needs CUDA), SGD (Adam turns float noise in the
# exactly-zero gradient of a key bias into lr-sized steps), a constant lr (resumes change `epochs`)
DDP = ["backbone=test_vit", "neck=linear", "optimizer=sgd", "scheduler=constant", "deterministic=true"]


def _train(tiny, runs, *extra):
    runs.mkdir(exist_ok=True)
    (runs / "m.yaml").write_text("# test config\n")
    p = cli("train", runs / "m.yaml", *tiny_overrides(tiny, runs, *DDP, "tensorboard=true"), *extra)  # rank 0 writes
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def _weights(run):
    ck = torch.load(run / "last.pt", weights_only=True)
    return ck, {f"{part}.{k}": v for part in ("model", "head") for k, v in ck[part].items()}


def _max_diff(a, b, same_step=True):
    (ca, wa), (cb, wb) = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and (ca["progress"]["step"] == cb["progress"]["step"]) == same_step
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].numel())


@pytest.fixture(scope="module")
def ddp_runs(tiny_data, tmp_path_factory):
    """One epoch with 1 and with 2 processes, 2 epochs with 1, and both 1-epoch runs resumed for a 2nd epoch
    with the other number of processes."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {k: root / k for k in ("one", "two", "one2", "two_then_one", "one_then_two")}
    _train(tiny_data, runs["one"], "epochs=1")
    ddp = _train(tiny_data, runs["two"], "epochs=1", "--nproc", WORLD)
    _train(tiny_data, runs["one2"], "epochs=2")
    for src, dst, n in (("two", "two_then_one", 1), ("one", "one_then_two", WORLD)):
        shutil.copytree(runs[src], runs[dst])
        _train(tiny_data, runs[dst], "epochs=2", "--resume", "--nproc", n)
    return {k: v / "m" / "fold0" for k, v in runs.items()}, ddp


def test_two_process_training_matches_one_process(ddp_runs):
    runs, proc = ddp_runs
    assert "torchrun: 2 processes (gloo)" in proc.stdout and "2 processes" in proc.stdout
    assert proc.stdout.count("epoch 1/1") == 1 and not proc.stderr.strip()  # rank 0 alone reports
    assert _max_diff(runs["one"], runs["two"]) < 1e-5
    assert _max_diff(runs["one"], runs["one2"], same_step=False) > 1e-3  # and the weights did move
    # rank 0 alone writes: the same files (one TensorBoard event file each, named by time and pid), no leftovers
    files = [sorted("events" if p.name.startswith("events.out.tfevents.") else p.name for p in runs[k].iterdir())
             for k in ("one", "two")]
    assert files[0] == files[1] and files[0].count("events") == 1
    one, two = ((r / "metrics.csv").read_text().splitlines() for r in (runs["one"], runs["two"]))
    cols = one[0].split(",")
    for a, b in zip(one[1:], two[1:]):  # validation embeds in shards; its figures are the one-process ones
        a, b = dict(zip(cols, a.split(","))), dict(zip(cols, b.split(",")))
        assert a["val_map5"] == b["val_map5"] and a["val_acc"] == b["val_acc"]
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) < 1e-5


def test_resume_works_with_any_number_of_processes(ddp_runs):
    runs, _ = ddp_runs
    assert _max_diff(runs["one2"], runs["two_then_one"]) < 1e-5
    assert _max_diff(runs["one2"], runs["one_then_two"]) < 1e-5


@pytest.fixture(scope="module")
def dropout_runs(tiny_data, tmp_path_factory):
    """2 processes with dropout in the neck: 2 epochs, and 1 epoch resumed for a 2nd (one torchrun launch)."""
    root = tmp_path_factory.mktemp("ddp_dropout")
    (root / "m.yaml").write_text("# test config\n")
    dropout = ["neck=projection", "neck_dropout=0.5"]  # projection: LayerNorm, no BatchNorm
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}",
                        str(Path(__file__).parent / "ddp_dropout_worker.py"), str(root),
                        *tiny_overrides(tiny_data, root, *DDP, *dropout)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    return {k: root / k / "m" / "fold0" for k in ("straight", "resumed")}


def test_ranks_draw_their_own_dropout_masks_and_resume_them_exactly(dropout_runs):
    ck, _ = _weights(dropout_runs["straight"])
    cpu = [s["cpu"] for s in ck["rng"]]  # last.pt keeps each rank's streams
    assert len(cpu) == WORLD and not torch.equal(cpu[0], cpu[1])  # rank 1 drew from seed + 1, not rank 0's stream
    # each rank resumes its own stream: the masks after the resume are those of the unbroken run
    assert _max_diff(dropout_runs["straight"], dropout_runs["resumed"]) == 0


@pytest.mark.parametrize("variant", [[], ["--flip", "--multicrop", "5"]])
def test_sharded_embedding_files_are_byte_identical(trained, tmp_path, variant):
    tiny, runs = trained
    shutil.copytree(runs / "a", tmp_path / "a")
    shutil.copy(runs / "a.yaml", tmp_path / "a.yaml")
    emb = tmp_path / "a" / "fold0" / "embeddings"
    shutil.rmtree(emb, ignore_errors=True)
    args = ["embed", tmp_path / "a.yaml", *variant, *tiny_overrides(tiny, tmp_path, "epochs=1")]
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    shutil.move(emb, tmp_path / "one")
    # 3 gallery batches of 32, one val and one test batch: the second process gets no val or test batch
    p = cli(*args, "--nproc", WORLD)
    assert p.returncode == 0, p.stdout + p.stderr
    names = sorted(x.name for x in emb.iterdir())
    assert names == sorted(x.name for x in (tmp_path / "one").iterdir()) and len(names) == 9  # 3 stems, centers
    match, mismatch, errors = filecmp.cmpfiles(emb, tmp_path / "one", names, shallow=False)
    assert not mismatch and not errors and len(match) == 9


@pytest.mark.parametrize("extra, needle", [
    (["batch_size=7", "--nproc", "2"], "batch_size=7 cannot be shared by 2 processes"),  # raised in the workers
    (["sync_bn=true", "--nproc", "2"], "sync_bn=true needs CUDA"),
    (["--nproc", "0"], "--nproc 0"),
])
def test_distributed_mistakes_are_one_line_errors(tiny_data, tmp_path, extra, needle):
    (tmp_path / "m.yaml").write_text("# test config\n")
    p = cli("train", tmp_path / "m.yaml", *tiny_overrides(tiny_data, tmp_path, *DDP), *extra)
    assert_one_line_error(p, needle)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("*.pt"))
