"""What validation costs and what a resume keeps: val_every skips validations without changing the weights,
val_gallery ranks against n images per class, metrics.csv and the epoch line give validation's seconds and share;
last.pt keeps the AMP scaler and every rank's RNG streams, and a last.pt from before them still resumes exactly."""
import csv
import re
import shutil

import pytest
import torch

from conftest import tiny_overrides

# a constant lr: the resumes below change `epochs`, which a cosine schedule would read
CONSTANT = ["scheduler=constant", "deterministic=true"]


def _cfg(tiny_data, runs, *extra):
    from pipeline.config import load_config

    runs.mkdir(parents=True, exist_ok=True)
    (runs / "v.yaml").write_text("# validation cost\n")
    return load_config(str(runs / "v.yaml"), tiny_overrides(tiny_data, runs, *CONSTANT, *extra))


def _train(cfg, resume=False):
    from pipeline.training.loop import train

    lines = []
    return train(cfg, resume=resume, log=lines.append), lines


def _weights(run, kind="last"):
    ck = torch.load(run / f"{kind}.pt", weights_only=True)
    return ck, {f"{part}.{k}": v for part in ("model", "head") for k, v in ck[part].items()}


def _same_weights(a, b):
    (_, wa), (_, wb) = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _rows(run):
    return list(csv.DictReader(open(run / "metrics.csv")))


def _as_old_checkpoint(run):
    """last.pt as written before the scaler and per-rank streams were kept: one CPU RNG state, no scaler, and a
    history without val_seconds."""
    ck = torch.load(run / "last.pt", weights_only=True)
    assert ck["scaler"] == {} and len(ck["rng"]) == 1 and set(ck["rng"][0]) == {"cpu"}  # a CPU run's
    del ck["scaler"]
    ck["rng"] = ck["rng"][0]["cpu"]
    for row in ck["progress"]["history"]:
        del row["val_seconds"]
    torch.save(ck, run / "last.pt")


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """each: validation every epoch (one epoch, then resumed to two); old: the same one-epoch run with its last.pt
    made old, resumed to two; sparse: val_every=2 val_gallery=1 for two epochs. (run folder, log lines) each."""
    root = tmp_path_factory.mktemp("valcost")
    _train(_cfg(tiny_data, root / "each", "epochs=1"))
    shutil.copytree(root / "each", root / "old")
    _as_old_checkpoint(root / "old" / "v" / "fold0")
    return {"each": _train(_cfg(tiny_data, root / "each", "epochs=2"), resume=True),
            "old": _train(_cfg(tiny_data, root / "old", "epochs=2"), resume=True),
            "sparse": _train(_cfg(tiny_data, root / "sparse", "epochs=2", "val_every=2", "val_gallery=1"))}


VAL = ("val_loss", "val_acc", "val_map5", "val_seconds")


def test_val_every_skips_validation_but_not_training(runs):
    (each, _), (sparse, sparse_log) = runs["each"], runs["sparse"]
    first, second = _rows(sparse)
    assert all(first[k] == "" for k in VAL) and all(second[k] != "" for k in VAL)  # the last epoch validates
    assert 0 < float(second["val_seconds"]) < float(second["seconds"])
    assert "not validated (val_every=2)" in sparse_log[1]
    assert re.search(r"MAP@5 [\d.]+, val [\d.]+ s = \d+% of the epoch", sparse_log[2]), sparse_log[2]
    # validation draws no random numbers: skipped, it leaves the weights exactly as validating every epoch does
    assert _same_weights(each, sparse)
    assert _weights(sparse, "best")[0]["progress"]["epoch"] == 2  # best.pt only from a validated epoch
    assert all(r[k] != "" for r in _rows(each) for k in VAL)


def test_val_gallery_ranks_against_n_images_per_class(runs, tiny_data, tmp_path):
    from pipeline.data.folds import split
    from pipeline.training.validation import gallery

    _, log = runs["sparse"]
    items = split(_cfg(tiny_data, tmp_path))[1]  # the training images of fold 0
    assert re.search(rf"val gallery 10 of {len(items)} training images", log[0]), log[0]
    two = gallery(items, 2, seed=42)
    counts = {}
    for it in two:
        counts[it.label] = counts.get(it.label, 0) + 1
    assert set(counts.values()) == {2} and len(counts) == 10  # every class of the tiny data has 2 or more
    assert two == gallery(items, 2, seed=42) and two != gallery(items, 2, seed=43)  # seeded
    assert two == [it for it in items if it in two]  # in the training order
    assert gallery(items, 0, seed=42) is items and gallery(items, 10**6, seed=42) == items


def test_a_last_pt_from_before_the_scaler_and_rank_streams_still_resumes_exactly(runs):
    (each, _), (old, old_log) = runs["each"], runs["old"]
    assert "resuming" in old_log[0]
    assert _same_weights(each, old)
    first, second = _rows(old)
    assert first["val_seconds"] == "" and second["val_seconds"] != ""  # the old row has no such figure
    ck, _ = _weights(old)
    assert ck["scaler"] == {} and len(ck["rng"]) == 1  # saved again in the new form


def test_the_amp_scaler_state_round_trips_through_last_pt(tmp_path):
    from pipeline.core import checkpoint

    # an enabled scaler on the CPU (torch allows it): one overflowing step halves the scale, good steps count up
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5)
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    for factor in (float("inf"), 1.0, 1.0):
        opt.zero_grad()
        scaler.scale(p.sum() * factor).backward()
        scaler.step(opt), scaler.update()
    state = scaler.state_dict()
    assert state["scale"] == 2.0**15 and state["_growth_tracker"] == 2
    checkpoint.save({"scaler": state}, tmp_path / "last.pt")
    back = torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]  # as checkpoint.load reads it
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=5)
    checkpoint.restore_scaler(fresh, back)
    assert fresh.state_dict() == state
    for saved in ({}, None):  # a file without a scaler state (older, or trained without AMP): the fresh scaler
        untouched = torch.amp.GradScaler("cpu")
        checkpoint.restore_scaler(untouched, saved)
        assert untouched.get_scale() == 2.0**16
    off = torch.amp.GradScaler("cuda", enabled=False)  # a GPU run's state resumed on the CPU: ignored
    checkpoint.restore_scaler(off, state)
    assert off.state_dict() == {}


def test_rng_streams_restore_per_rank_and_old_files_are_one_process():
    from pipeline.core import checkpoint

    torch.manual_seed(0)
    saved = [checkpoint.rng_state("cpu"), None]
    want = torch.rand(3)
    torch.manual_seed(1)
    saved[1] = checkpoint.rng_state("cpu")
    assert checkpoint.restore_rng(saved, 0, "cpu") and torch.equal(torch.rand(3), want)
    assert checkpoint.restore_rng(saved, 1, "cpu") and not torch.equal(torch.rand(3), want)
    assert not checkpoint.restore_rng(saved, 2, "cpu")  # saved by fewer processes: this rank keeps its stream
    assert checkpoint.restore_rng(saved[0]["cpu"], 0, "cpu") and torch.equal(torch.rand(3), want)  # old form


@pytest.mark.parametrize("bad, needle", [("val_every=0", "val_every=0: must be >= 1"),
                                         ("val_gallery=-1", "val_gallery=-1: must be >= 0"),
                                         ("val_gallery=many", "val_gallery='many': give a whole number >= 0")])
def test_bad_validation_keys_are_one_line_errors(tiny_data, tmp_path, bad, needle):
    from pipeline.core.errors import UserError

    with pytest.raises(UserError, match=re.escape(needle)):
        _train(_cfg(tiny_data, tmp_path, bad))
    assert not any(tmp_path.rglob("*.pt"))
