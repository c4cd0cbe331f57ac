"""Run the test suite (pytest over tests/); extra arguments go to pytest. CI runs exactly this.

example: ./run.sh test            (or: ./run.sh test -k rank -x)"""
import argparse
import subprocess
import sys
from pathlib import Path


def add_arguments(p):
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. -k rank)")


def run(args):
    root = Path(__file__).resolve().parents[2]  # the repository: pipeline/stages/test.py -> ../..
    cmd = [sys.executable, "-m", "pytest", str(root / "tests"), "-q", *args.pytest_args]
    code = subprocess.call(cmd, cwd=root)
    # pytest's 5 means it collected no test: that is a failure here, never a silent pass.
    return 1 if code == 5 else code
