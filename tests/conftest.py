import functools
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist runs one worker per core: torch's default of one thread per core in every worker (and in each stage
# it starts) oversubscribes the cores, and spinning threads then wait on each other (a tiny forward: 2 ms -> 0.4 s)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
sys.path.insert(0, str(ROOT))

# A tiny, fast model setup for pipeline tests: timm's test model, small images and embeddings, no workers.
# TensorBoard off: importing it costs each training process ~0.3 s; the `trained` fixture and test_logbook turn it on
TINY = ["backbone=test_efficientnet", "pretrained=false", "image_size=32", "embedding_dim=32", "batch_size=8",
        "eval_batch_size=32", "num_workers=0", "epochs=2", "lr=0.05", "tensorboard=false"]


def cli(*args, cwd=ROOT, env=None, timeout=600):
    """Run `python -m pipeline ARGS` as a user would; returns the CompletedProcess. env: extra variables (a value
    of None removes that variable)."""
    e = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset it
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


PYPATH = {"PYTHONPATH": str(ROOT)}  # for cli() run from another folder


def md_lines(text):
    """A markdown table's lines with the cell padding squeezed out ('|  a |' -> '| a |'), to compare contents."""
    return "\n".join(" ".join(line.split()) for line in text.splitlines())


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error:"), err
    for n in needles:
        assert n in err, err


def pytest_configure(config):
    config.addinivalue_line("markers", "pypi: downloads wheels with pip download (kernel packaging); without the "
                                       "package index pip is configured with it fails in one line, not a timeout")


@functools.cache
def pip_index():
    """The index pip download uses here: PIP_INDEX_URL, else the last index-url pip's config files set, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    found = "https://pypi.org/simple"
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=30)
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.split(".", 1)[-1] == "index-url" and key.split(".", 1)[0] in ("global", "download"):
            found = value.strip().strip("'\"")
    return found


@functools.cache
def pypi_unreachable():
    """None where pip's index serves its page for pip, else why not; probed once per process, at most a few
    seconds."""
    url = pip_index().rstrip("/") + "/pip/"
    if url.startswith("file:"):  # a local mirror
        there = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).parent.is_dir()
        return None if there else f"{pip_index()} unreachable (no such folder)"
    try:  # an index serves pip's own page; an error status is no index (a proxy may answer for any host)
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError as e:
        return f"{pip_index()} unreachable (HTTP {e.code} for {url})"
    except (OSError, ValueError) as e:
        return f"{pip_index()} unreachable ({getattr(e, 'reason', e)})"
    return None


def require_pypi():
    """Fail the calling test in one line where pip download could not reach its index (not skip: CI has PyPI, so a
    skip would hide a break)."""
    why = pypi_unreachable()
    if why:
        pytest.fail(f"needs PyPI (pip download): {why}", pytrace=False)


def pytest_runtest_setup(item):
    if item.get_closest_marker("pypi"):
        require_pypi()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A small embedded dataset (generated once per test session) with its folds file."""
    from pipeline.data.folds import write_folds
    from pipeline.data.layouts import load_dataset
    from pipeline.data.synth import make_dataset

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", seed=3, hotels=10)
    write_folds(load_dataset(data), root / "folds.csv", n_folds=5, seed=1)
    return root


def tiny_overrides(root, runs, *extra):
    return [f"data={root / 'data'}", f"folds_file={root / 'folds.csv'}", f"runs_dir={runs}", *TINY, *extra]


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """Two tiny runs, a (arcface) and b (cosface, GeM, other seed), one epoch each: (tiny_data, runs dir)."""
    runs = tmp_path_factory.mktemp("runs")
    for name, extra in (("a", ""), ("b", "head: cosface\npooling: gem\nseed: 5\n")):
        (runs / f"{name}.yaml").write_text("# test config\n" + extra)
        p = cli("train", runs / f"{name}.yaml", *tiny_overrides(tiny_data, runs, "epochs=1", "tensorboard=true"))
        assert p.returncode == 0, p.stderr
    return tiny_data, runs


def copy_runs(trained, dest, names=("a",)):
    """The session's trained runs (each config file and its run folder as training left it: no embeddings, rotation
    classifier or search output) copied into dest: a module's own runs folder, whose caches and files are its own,
    without training again. Returns dest."""
    from pipeline.retrieval.orientation import FILE as ORIENTER

    _, runs = trained
    for n in names:
        shutil.copyfile(runs / f"{n}.yaml", dest / f"{n}.yaml")
        shutil.copytree(runs / n, dest / n, ignore=shutil.ignore_patterns("embeddings", "search", ORIENTER))
    return dest


# the kernel fixture packages the tricks that need files beside the weights (class centers, the rotation classifier)
# or views of the queries, so its offline check proves Kaggle's kernel computes them as ensemble does
KERNEL_TRICKS = ["--rotate", "--upright", "--knn-alpha", "0.5", "--fill", "blendflip", "--scales", "0.75,1"]
KERNEL_WHEELS = ["timm", "albumentations", "albucore", "stringzilla"]


@pytest.fixture(scope="session")
def kernel_package(trained, tmp_path_factory):
    """kernels/tiny-kernel built (and verified by the stage itself) in a fresh project folder: (folder, package dir).
    The build's output, the offline check's included, is in <folder>/kernel.log. CUDA_VISIBLE_DEVICES points at
    nothing, so the check's kernel says in one line that it runs on the CPU (test_kernel reads it: one offline run
    serves every test)."""
    require_pypi()  # --wheels: pip download
    tiny, runs = trained
    work = tmp_path_factory.mktemp("project")
    # the image has every need at a version the kernel works with, so nothing would ship: these are shipped anyway
    # (pure and compiled wheels, a dependency among them) so the check proves the install path too
    p = cli("kernel", "tiny-kernel", "--models", runs / "a.yaml", runs / "b.yaml", "--owner", "tester",
            "--wheels", *KERNEL_WHEELS, *KERNEL_TRICKS, *tiny_overrides(tiny, runs, "epochs=1"), cwd=work,
            env={**PYPATH, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    (work / "kernel.log").write_text(p.stdout)
    assert "kernel check: offline run" in p.stdout and "its submission equals" in p.stdout, p.stdout
    assert "run-time projection on T4 for 5000 test photos" in p.stdout, p.stdout
    return work, work / "kernels" / "tiny-kernel"
