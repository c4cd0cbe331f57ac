"""The competitor's loop from start to finish, as the commands a competitor types, against loopback stand-ins for the
weights hub (tests/hub_standin.py) and Kaggle (tests/kaggle_standin.py): weights (fetched once, then cached and
exported) -> download -> folds -> train two
folds with the network cut -> out-of-fold evaluate -> ensemble -> kernel (its offline check in a baseline-only venv)
-> upload (checked against Kaggle's file list) -> status --wait -> submit -> status --wait (the score) -> score.
No credential in any byte sent, logged or written."""
import json
import shutil

import timm
import torch
from hub_standin import HubStandIn, hub_env, refused_endpoint
from safetensors.torch import save
from test_upload import USER, assert_no_credential, kaggle_env

from pipeline.config import load_config
from pipeline.core.io import read_table
from pipeline.data.layouts import load_dataset
from pipeline.data.synth import make_dataset
from pipeline.model.embedder import build_model

from conftest import PYPATH, cli
from kaggle_standin import StandIn

SLUG = "tiny-hotel-loop"
CONFIG = """# the loop's model: timm's tiny test network with its (stand-in) hub weights, on the downloaded competition
backbone: test_efficientnet
pretrained: true
data: data/comp
competition: tiny-hotel-loop
image_size: 32
embedding_dim: 32
batch_size: 8
eval_batch_size: 32
num_workers: 0
epochs: 1
lr: 0.05
"""
FAST = ("--interval", "0.05", "--timeout", "60")


def _map5(rows, truth):
    """Kaggle's MAP@5 written out: the first correct label among the first 5 scores 1/rank, repeats skipped."""
    total = 0.0
    for image_id, labels in rows:
        for rank, label in enumerate(labels.split()[:5], start=1):
            if label == truth[image_id]:
                total += 1 / rank
                break
    return total / len(rows)


def test_the_competitors_loop(tmp_path):
    src = make_dataset(tmp_path / "kaggle" / SLUG, seed=4, hotels=8)
    truth_file = tmp_path / "test_truth.csv"
    shutil.move(src / "test_truth.csv", truth_file)  # Kaggle keeps the answers
    work = tmp_path / "project"
    work.mkdir()
    (work / "loop.yaml").write_text(CONFIG)
    served = timm.create_model("test_efficientnet").state_dict()
    repo = timm.models.get_pretrained_cfg("test_efficientnet").hf_hub_id
    run = lambda *args, env=None: _ok(cli(*args, cwd=work, env={**PYPATH, **(env or {})}))

    with HubStandIn({f"{repo}/model.safetensors": save(served)}) as hub:
        caches = hub_env(tmp_path, hub.url)
        first = run("weights", "loop.yaml", env=caches)
        assert "test_efficientnet (loop): downloaded" in first.stdout and caches["HF_HUB_CACHE"] in first.stdout
        assert hub.gets("model.safetensors") == 1
        seen = len(hub.requests)
        again = run("weights", "loop.yaml", "--export", "weights", env=caches)
        assert "test_efficientnet (loop): cached" in again.stdout, again.stdout
        assert len(hub.requests) == seen, hub.requests[seen:]  # the second call asked the hub nothing
        assert "pretrained_file=" in again.stdout
    # the exported file is timm-format: pretrained_file loads it as is, for a machine without internet
    exported = work / "weights" / "test_efficientnet.safetensors"
    model, source = build_model(load_config("default", ["backbone=test_efficientnet", "embedding_dim=8",
                                                        f"pretrained_file={exported}"]))
    assert source.startswith("file:") and torch.equal(model.backbone.conv_stem.weight, served["conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, served["bn2.running_var"])
    cut = {**caches, "HF_ENDPOINT": refused_endpoint()}  # from here on the hub is gone

    with StandIn() as s:
        s.add_competition(SLUG, src)
        env = kaggle_env(tmp_path, s)
        fetched = run("download", "--competition", SLUG, "--out", "data/comp", env=env)
        ds = load_dataset(work / "data" / "comp")
        counts = f"{len(ds.train)} train images of {len(ds.classes)} classes, {len(ds.test)} test images"
        assert counts in fetched.stdout, fetched.stdout

        run("folds", "--data", "data/comp", "--n-folds", "4", env=cut)
        trained = run("train", "loop.yaml", "--folds", "0-1", env=cut)
        assert trained.stdout.count("hub cache:") == 2, trained.stdout  # both folds start from the fetched weights
        assert all((work / "runs" / "loop" / f"fold{k}" / "best.pt").is_file() for k in (0, 1))

        oof = run("evaluate", "loop.yaml", "--oof", "--folds", "0-1", env=cut)
        assert "loop out-of-fold" in oof.stdout, oof.stdout
        ens = run("ensemble", "loop.yaml", "--folds", "0-1", "--out", "loop", env=cut)
        assert "ensemble out-of-fold" in ens.stdout, ens.stdout

        built = run("kernel", "loop-kernel", "--models", "loop.yaml", "--folds", "0-1", "--owner", USER, env=cut)
        pkg = work / "kernels" / "loop-kernel"
        assert "its submission equals" in built.stdout and (pkg / "verified.json").is_file()
        kernel = json.loads((pkg / "models" / "kernel.json").read_text())
        assert kernel["models"] == ["loop-fold0", "loop-fold1"]

        pushed = run("upload", "loop-kernel", env=env)
        assert json.loads((pkg / "pushed.json").read_text())["version"] == 1
        # Kaggle runs the kernel: its output is what it wrote in the offline check here, which the check found equal
        # to the local ensemble of the same models (kernel-<name>.csv), as is the ensemble stage's own submission
        checked = (work / "submissions" / "kernel-loop-kernel.csv").read_bytes()
        assert checked == (work / "submissions" / "loop.csv").read_bytes()
        s.output["submission.csv"] = checked
        s.kernel_states = ["RUNNING", "COMPLETE"]
        ran = run("status", "loop-kernel", "--wait", *FAST, env=env)
        submitted = run("submit", "loop-kernel", "--message", "loop", env=env)
        scored = run("status", "loop-kernel", "--wait", *FAST, env=env)
        assert s.score in scored.stdout, scored.stdout

        got = pkg / "output" / "submission.csv"
        assert got.read_bytes() == checked  # status fetched the kernel's output
        score = run("score", got, "--truth", truth_file)
        rows = read_table(got).values.tolist()
        truth = dict(read_table(truth_file).values.tolist())
        assert f"MAP@5: {_map5(rows, truth):.5f}" in score.stdout, score.stdout

    assert_no_credential(s, [fetched, pushed, ran, submitted, scored], [work])


def _ok(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc
