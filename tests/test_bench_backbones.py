"""bench/backbones.py on timm's tiny test models, in process and for a fraction of a second each."""
import importlib.util
import json

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_backbones", ROOT / "bench" / "backbones.py")
backbones = importlib.util.module_from_spec(spec)
spec.loader.exec_module(backbones)


def test_measure_counts_params_picks_the_memory_format_and_keeps_to_its_time():
    row = backbones.measure("test_efficientnet", "cpu", batch=2, size=32, precisions=["fp32"], seconds=0.2, warmup=1)
    fresh = backbones.create("test_efficientnet", 32)
    assert row["params_m"] == round(sum(p.numel() for p in fresh.parameters()) / 1e6, 2) > 0
    assert row["memory_format"] == "channels_last" and row["batch"] == 2
    assert row["seed_3090_img_s"] is None and row["ratio"] is None  # no seed figure for a test model
    assert 0.2 <= row["timed_s"] < 3  # time-bounded: stops once the budget is spent (slack for a shared machine)
    assert row["img_s"] == pytest.approx(2 * row["iterations"] / row["timed_s"], rel=0.01)


def test_main_prints_one_json_with_the_ratio_to_the_seed(capsys, monkeypatch):
    monkeypatch.setitem(backbones.SEED_3090_IMG_S, "test_vit", 50)
    backbones.main(["--device", "cpu", "--backbones", "test_vit,no_such_model", "--seconds", "0.1"])
    out = json.loads(capsys.readouterr().out)
    vit = out["backbones"]["test_vit"]
    assert out["device"] == "cpu" and out["size"] == 224 and out["precision"] == "fp32"
    assert vit["memory_format"] == "contiguous"  # one Conv2d (the patch embedding): not a conv net
    assert vit["seed_3090_img_s"] == 50 and vit["ratio"] == pytest.approx(vit["img_s"] / 50, rel=6e-3)
    assert "no_such_model" in out["backbones"]["no_such_model"]["error"]  # reported, and the others still run
