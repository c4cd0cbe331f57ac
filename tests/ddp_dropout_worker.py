"""Run under torchrun with 2 processes (tests/test_distributed.py): three trainings in the same processes, one
launch instead of three - 2 epochs straight (runs_dir argv[1]/straight), and 1 epoch then resumed for a 2nd
(argv[1]/resumed). argv[2:]: the config overrides (a model with dropout)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.config import load_config
from pipeline.core import distributed
from pipeline.training.loop import train


def main(root, overrides):
    for name, epochs, resume in (("straight", 2, False), ("resumed", 1, False), ("resumed", 2, True)):
        cfg = load_config(str(root / "m.yaml"), [*overrides, f"runs_dir={root / name}", f"epochs={epochs}"])
        train(cfg, resume=resume, log=lambda *a: None)


if __name__ == "__main__":
    distributed.run_stage(None, [], lambda: main(Path(sys.argv[1]), sys.argv[2:]))
