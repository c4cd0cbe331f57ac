"""Train -> embed -> ensemble on a tiny embedded dataset with timm's test model, through the real CLI."""
import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pipeline.data.samplers import SAMPLERS

from conftest import ROOT, assert_one_line_error, cli, copy_runs, tiny_overrides


@pytest.fixture(scope="module")
def trained(trained, tmp_path_factory):
    """The session's runs a and b (one epoch each) in this module's own runs folder: its embed and ensemble tests
    write caches and edit a checkpoint there, not in the session's."""
    tiny_data, _ = trained
    return tiny_data, copy_runs(trained, tmp_path_factory.mktemp("runs"), ("a", "b"))


def test_train_writes_run_folder(trained):
    _, runs = trained
    run = runs / "a" / "fold0"
    for f in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1"]  # one row per epoch: the 3-epoch runs below check rows 1, 2, 3
    for r in rows:
        assert 0 <= float(r["val_map5"]) <= 1 and float(r["train_loss"]) > 0 and float(r["val_acc"]) >= 0
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["progress"]["epoch"] == 1 and ck["config"]["epochs"] == 1
    assert not list(run.glob(".*.tmp"))


def _ensemble(tiny_data, runs, names, out):
    p = cli("ensemble", *[runs / f"{n}.yaml" for n in names], "--out", out,
            "--overrides", *tiny_overrides(tiny_data, runs, "epochs=1"))
    assert p.returncode == 0, p.stderr
    return json.loads((runs / "ensembles" / out / "scores.json").read_text())


def test_embed_cache_and_invalidation(trained):
    tiny_data, runs = trained
    args = ["embed", runs / "a.yaml", *tiny_overrides(tiny_data, runs, "epochs=1")]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    emb = runs / "a" / "fold0" / "embeddings"
    manifest = json.loads((emb / "manifest.json").read_text())
    assert set(manifest) == {"gallery", "val", "test", "centers"}  # centers: the head's class weights
    g = np.load(emb / "gallery.npy")
    assert g.dtype == np.float16 and np.allclose(np.linalg.norm(g.astype(np.float32), axis=1), 1, atol=1e-2)
    mtimes = {p.name: p.stat().st_mtime_ns for p in emb.iterdir()}
    second = cli(*args)
    assert "up to date" in second.stdout and "embedded" not in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in emb.iterdir()} == mtimes  # no forward pass, nothing rewritten
    # a changed checkpoint (other content) recomputes every split
    ck_path = runs / "a" / "fold0" / "best.pt"
    ck = torch.load(ck_path, weights_only=True)
    next(v for v in ck["model"].values() if v.dtype == torch.float32).add_(0.01)
    torch.save(ck, ck_path)
    third = cli(*args)
    assert third.stdout.count("embedded") == 3, third.stdout
    assert json.loads((emb / "manifest.json").read_text())["gallery"]["key"] != manifest["gallery"]["key"]


def test_ensemble_equals_brute_force(trained):
    tiny_data, runs = trained
    report = _ensemble(tiny_data, runs, ["a", "b"], "ab")
    embs = [runs / n / "fold0" / "embeddings" for n in ("a", "b")]
    load = lambda d, s: (np.load(d / f"{s}.npy").astype(np.float64), list(csv.DictReader(open(d / f"{s}.csv"))))
    (ga, grows), (gb, _) = load(embs[0], "gallery"), load(embs[1], "gallery")
    (ta, trows), (tb, _) = load(embs[0], "test"), load(embs[1], "test")
    sims = ta @ ga.T + tb @ gb.T  # equal-weight sum of cosines
    labels = np.array([r["label"] for r in grows])
    classes = sorted(set(labels))
    per_class = np.stack([sims[:, labels == c].max(1) for c in classes], 1)
    expected = {}
    for r, row in zip(trows, per_class):
        order = sorted(range(len(classes)), key=lambda j: (-row[j], j))[:5]
        expected[r["image_id"]] = " ".join(classes[j] for j in order)
    got = {r["image_id"]: r["hotel_id"] for r in csv.DictReader(open(ROOT / report["submission"]))}
    assert got == expected
    assert set(report["models"]) == {"a", "b"} and 0 <= report["ensemble"]["val_map5"] <= 1
    assert "test_map5" in report["ensemble"]
    # the submission is valid for the data folder
    p = cli("validate", ROOT / report["submission"], "--data", tiny_data / "data")
    assert p.returncode == 0, p.stderr
    (ROOT / report["submission"]).unlink()


def _final_state(run):
    ck = torch.load(run / "last.pt", weights_only=True)
    return ck["progress"]["step"], ck["model"], {**ck["head"], **{f"ema.{k}": v for k, v in ck.get("ema", {}).items()}}


@pytest.mark.parametrize("features", [[], ["accum_steps=2", "ema=0.9", "sampler=m_per_class", "m_per_class.n=2",
                                           "scheduler=plateau", "lr_mult.head=10"]], ids=["plain", "accum-ema-plateau"])
def test_resume_after_sigkill_matches_uninterrupted(features, tiny_data, tmp_path):
    extra = ["epochs=3", "save_every_steps=1", "batch_size=4", "deterministic=true", *features]
    cfg = tmp_path / "r.yaml"
    cfg.write_text("epochs: 3\n")
    full = cli("train", cfg, *tiny_overrides(tiny_data, tmp_path / "full", *extra))
    assert full.returncode == 0, full.stderr
    steps, model_ref, head_ref = _final_state(tmp_path / "full" / "r" / "fold0")

    runs = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipeline", "train", str(cfg), *tiny_overrides(tiny_data, runs, *extra)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = runs / "r" / "fold0" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file():
            try:
                prog = torch.load(last, weights_only=True)["progress"]
            except Exception:
                prog = None  # never happens with atomic writes, but a read may race a rename
            if prog and prog["epoch"] == 1 and prog["batch"] >= 3:  # mid-way through the second epoch
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    killed_at = torch.load(last, weights_only=True)["progress"]
    assert killed_at["step"] < steps
    resumed = cli("train", cfg, "--resume", *tiny_overrides(tiny_data, runs, *extra))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    got_steps, model, head = _final_state(runs / "r" / "fold0")
    assert got_steps == steps
    for k in model_ref:
        assert torch.equal(model[k], model_ref[k]), k
    for k in head_ref:
        assert torch.equal(head[k], head_ref[k]), k
    rows = list(csv.DictReader(open(runs / "r" / "fold0" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_m1_pretrained_offline_stops_at_once(tiny_data, tmp_path):
    """m1 (eca_nfnet_l2) with pretrained=true and no weights on this machine stops in one line before any work. Its
    real architecture trains in test_recipes (m1_losstransform: m1's backbone and head, one step through the same
    registries as train)."""
    base = [f"data={tiny_data / 'data'}", f"folds_file={tiny_data / 'folds.csv'}", f"runs_dir={tmp_path}",
            "num_workers=0", "eval_batch_size=8"]
    t = time.time()
    p = cli("train", "m1", "epochs=1", "image_size=64", "batch_size=2", "pretrained=true", *base)
    assert_one_line_error(p, "no pretrained weights for backbone 'eca_nfnet_l2' offline", "pretrained_file")
    assert time.time() - t < 30  # interpreter start + imports; the check itself is immediate
    assert not (tmp_path / "m1").exists()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_trains_and_loss_falls(sampler, tiny_data, tmp_path):
    """Each sampler drives real training (./run.sh train) of the tiny model; repeated_aug with LossTransform."""
    # repeated_aug sees only 1/repeats of the images per epoch, so it gets more epochs (its loss falls to ~0.55x in
    # 5; in 3 it was 0.77-0.82x, too close to the bar on another machine's arithmetic)
    extra = {"m_per_class": ["epochs=3", "m_per_class.n=2"],
             "repeated_aug": ["epochs=5", "repeated_aug.repeats=2", "loss_transform=0.5"]}.get(sampler, ["epochs=3"])
    cfg = tmp_path / f"{sampler}.yaml"
    cfg.write_text(f"sampler: {sampler}\n")
    p = cli("train", cfg, *tiny_overrides(tiny_data, tmp_path, *extra))
    assert p.returncode == 0, p.stderr
    assert f"{sampler} batches" in p.stdout
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / sampler / "fold0" / "metrics.csv"))]
    assert losses[-1] < 0.8 * losses[0], losses
