"""Resumable embed: a run interrupted after its first chunk resumes from the kept chunk (in one process or under
torchrun) and writes the bytes of an uninterrupted run; chunks made for another key are not reused; the cache key
tells apart the dtype, AMP and device that made the rows."""
import io
import json
import re
import shutil

import numpy as np
import pytest

from pipeline.core.errors import UserError

from conftest import cli, tiny_overrides

CHUNKED = ["eval_batch_size=8", "embed_chunk=20"]  # 20 rounds down to 2 batches: chunks of 16 images
FILES = [f"{s}.{ext}" for s in ("gallery", "val", "test") for ext in ("npy", "csv")]


class Interrupted(Exception):
    pass


def _silent(*args):
    pass


def _copy(trained, where):
    """A copy of the trained run a under `where`, without embeddings: (config path, overrides)."""
    tiny, runs = trained
    shutil.copytree(runs / "a", where / "a", ignore=shutil.ignore_patterns("embeddings"))
    shutil.copy(runs / "a.yaml", where / "a.yaml")
    return where / "a.yaml", tiny_overrides(tiny, where, "epochs=1", "eval_batch_size=8")


def _cfg(trained, where, *extra):
    from pipeline.config import load_config

    path, overrides = _copy(trained, where)
    return load_config(str(path), [*overrides, *extra])


def _embed(cfg, log=_silent):
    from pipeline.retrieval.embeddings import ensure_embeddings

    return ensure_embeddings(cfg, log=log)


def _interrupt(cfg):
    """Embed until the first gallery chunk is saved, then stop as a kill would (nothing after it runs)."""
    def log(line):
        if line.startswith("embedded a gallery 16/"):
            raise Interrupted

    with pytest.raises(Interrupted):
        _embed(cfg, log)
    return _emb_dir(cfg) / "gallery.parts"


def _emb_dir(cfg):
    from pipeline.config import run_dir

    return run_dir(cfg) / "embeddings"


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """The files of an uninterrupted embed in one chunk per split (the same batches of 8)."""
    cfg = _cfg(trained, tmp_path_factory.mktemp("ref"))
    _embed(cfg)
    return {n: (_emb_dir(cfg) / n).read_bytes() for n in FILES}


def test_an_interrupted_embed_resumes_from_its_chunks_byte_identically(trained, reference, tmp_path):
    cfg = _cfg(trained, tmp_path, *CHUNKED)
    parts = _interrupt(cfg)
    assert sorted(p.name for p in parts.parent.iterdir()) == ["gallery.parts"]
    assert sorted(p.name for p in parts.iterdir()) == ["000000000.npy", "key.json"]
    lines = []
    assert _embed(cfg, lines.append).computed == ["gallery", "val", "test"]
    n, val = (len(np.load(io.BytesIO(reference[f"{s}.npy"]))) for s in ("gallery", "val"))
    assert n > 32 and val > 16  # the val split's random mask is seeded across chunks too
    assert lines[0].startswith(f"resuming a gallery: 1 of {-(-n // 16)} chunks kept")
    done = [line for line in lines if line.startswith("embedded a gallery ") and "/" in line]
    assert done == [f"embedded a gallery {min(s + 16, n)}/{n}" for s in range(16, n, 16)]  # only the missing ones
    # progress off a terminal (pipeline/core/progress.py): its last line counts the kept chunk too
    assert any(re.fullmatch(rf"embedding a gallery: {n}/{n} images \(100%\), [\d.]+ img/s, done in [\d.]+s", line)
               for line in lines), lines
    assert {n: (parts.parent / n).read_bytes() for n in FILES} == reference
    assert not parts.exists()


def test_kept_chunks_are_reused_and_those_of_another_key_are_not(trained, reference, tmp_path):
    from pipeline.core.io import save_npy

    cfg = _cfg(trained, tmp_path, *CHUNKED)
    parts = _interrupt(cfg)
    # rows no model made: seen in the result, they show the kept chunk was used rather than recomputed
    marker = -np.load(parts / "000000000.npy")
    save_npy(parts / "000000000.npy", marker)
    _embed(cfg)
    got, want = np.load(parts.parent / "gallery.npy"), np.load(io.BytesIO(reference["gallery.npy"]))
    assert np.array_equal(got[:16], marker) and np.array_equal(got[16:], want[16:])
    shutil.rmtree(parts.parent)
    _interrupt(cfg)
    save_npy(parts / "000000000.npy", marker)
    meta = json.loads((parts / "key.json").read_text())
    (parts / "key.json").write_text(json.dumps({**meta, "key": "0" * 64}))
    lines = []
    _embed(cfg, lines.append)
    assert not [line for line in lines if line.startswith("resuming")]
    assert (parts.parent / "gallery.npy").read_bytes() == reference["gallery.npy"]


def test_a_resume_under_torchrun_is_byte_identical(trained, reference, tmp_path):
    from pipeline.config import load_config

    path, overrides = _copy(trained, tmp_path)
    parts = _interrupt(load_config(str(path), [*overrides, *CHUNKED]))
    # each chunk is 2 batches: one per process
    p = cli("embed", path, "--nproc", 2, *overrides, *CHUNKED)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resuming a gallery: 1 of" in p.stdout and p.stdout.count("resuming") == 1
    assert {n: (parts.parent / n).read_bytes() for n in FILES} == reference
    assert not parts.exists()


def test_the_cache_key_tells_apart_dtype_amp_and_device():
    from pipeline.config import load_config
    from pipeline.retrieval.embeddings import cache_key, made_by
    from pipeline.retrieval.forward import chunking

    def key(*made):
        return cache_key("weights", [], "transform", 32, made_by(*made))

    cuda = key(np.float16, True, "cuda")
    assert len({cuda, key(np.float32, True, "cuda"), key(np.float16, False, "cuda"), key(np.float16, True, "cpu")}) == 4
    assert key(np.float16, True, "cuda:1") == cuda
    assert key(np.float16, True, "cpu") == key(np.float16, False, "cpu")  # AMP never runs on the CPU
    assert chunking({"eval_batch_size": 16, "embed_chunk": 40}, 5, 100) == {"batch": 3, "chunk": 39, "rows": 100}
    with pytest.raises(UserError, match="embed_chunk=0: must be >= 1"):  # the config's range, where it is read
        load_config("default", ["embed_chunk=0"])
