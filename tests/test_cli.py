"""What a user sees: help for every stage, and one-line errors (no traceback, non-zero exit) for bad input."""
import shutil
import subprocess
import sys

import pytest

from pipeline.stages import STAGES

from conftest import ROOT, assert_one_line_error, cli, tiny_overrides


def test_top_level_help_lists_every_stage():
    p = cli("--help")
    assert p.returncode == 0
    for stage in STAGES:
        assert stage in p.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_help_has_an_example(stage):
    p = cli(stage, "--help")
    assert p.returncode == 0, p.stderr
    assert f"example: ./run.sh {stage}" in p.stdout


HEAVY = ("torch", "albumentations", "timm", "pandas")


@pytest.mark.parametrize("argv", [["score", "missing.csv", "--truth", "t.csv"], ["train", "m1", "batch_size=big"],
                                  ["ensemble", "m1", "--dba", "x"], ["evaluate", "m1", "--metrics", "bad"]],
                         ids=["score", "train", "ensemble", "evaluate"])
def test_a_command_line_mistake_costs_no_heavy_import(argv):
    """Every ./run.sh command builds the whole parser, the trick flags included: neither it nor a stage's checks of
    its arguments and config may import torch or albumentations (they were 1.8 s of a 2.6 s `./run.sh score`)."""
    code = ("import sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "2 []", p.stdout + p.stderr


def test_run_sh_is_a_fast_noop_when_set_up():
    import time

    t = time.time()
    p = subprocess.run([str(ROOT / "run.sh"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "<stage>" in p.stdout
    assert "setting up" not in p.stderr  # the venv check is a hash compare, not a reinstall
    # ~2 s idle, ~7 s beside the suite's other worker; a reinstall takes minutes
    assert time.time() - t < 30


def test_image_file_that_is_not_an_image(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "data", data)
    bad = next((data / "train_images").iterdir()) / "zz_not_an_image.jpg"
    bad.write_text("this is text")
    assert cli("folds", "--data", data, "--out", tmp_path / "folds.csv").returncode == 0
    p = cli("train", "default", *tiny_overrides(tmp_path, tmp_path / "runs", "epochs=1", "num_workers=2"))
    assert_one_line_error(p, "zz_not_an_image.jpg", "not a readable image")


def test_wrong_type(tiny_data, tmp_path):
    assert_one_line_error(cli("train", "m1", "batch_size=big"), "'batch_size' must be int")


def test_embed_before_training(tiny_data, tmp_path):
    p = cli("embed", "default", *tiny_overrides(tiny_data, tmp_path))
    assert_one_line_error(p, "best.pt not found", "./run.sh train")
