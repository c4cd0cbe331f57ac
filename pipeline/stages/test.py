"""Run the test suite (pytest over tests/) in parallel processes (pytest-xdist: one per core, at most 4); extra
arguments go to pytest and win (-n 0: one process). CI runs exactly this.

example: ./run.sh test            (or: ./run.sh test -k rank -x -n 0)"""
import argparse
import os
import subprocess
import sys
from pathlib import Path


def add_arguments(p):
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. -k rank)")


def run(args):
    root = Path(__file__).resolve().parents[2]  # the repository: pipeline/stages/test.py -> ../..
    # most tests wait on subprocesses and imports, so even 2 cores run two tests at once faster (docs/benchmarks.md)
    workers = min(4, len(os.sched_getaffinity(0)))
    cmd = [sys.executable, "-m", "pytest", str(root / "tests"), "-q", "-n", str(workers), *args.pytest_args]
    from pipeline.core.guard import without_credentials

    # the tests reach Kaggle only through the loopback stand-in: no credential of this machine's goes in
    code = subprocess.call(cmd, cwd=root, env=without_credentials())
    # pytest's 5 means it collected no test: that is a failure here, never a silent pass.
    return 1 if code == 5 else code
