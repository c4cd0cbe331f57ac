"""Issue 27's memory bounds at full scale: a process reading a gallery or the image cache from disk holds only its
budgeted buffers, not the files' pages (bench/scale.py measures the whole thing; these pin each mechanism).
Linux only, like the pipeline's own memory figures: they read /proc/self/smaps_rollup and /proc/self/maps."""
from pathlib import Path

import numpy as np
import pytest
from test_image_cache import _photo

from pipeline.core.io import drop_pages, take_rows
from pipeline.data.image_cache import CacheSpec, ImageReader, build_cache
from pipeline.data.images import read_image
from pipeline.data.layouts import Item
from pipeline.retrieval.rank import rank

MB = 1 << 20


def _mapped_kb(path):
    """kB of path's pages this process holds resident, over every mapping of it (/proc/self/smaps). Only that file's
    mappings count: a shared library a first call maps in (the test's order across workers decides which call is
    first) is not the gallery."""
    held, mine = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header: range perms offset dev inode
            mine = len(head) == 6 and head[5] == str(Path(path).resolve())
        elif mine and line.startswith("Rss:"):
            held += int(line.split()[1])
    return held


@pytest.fixture
def gallery(tmp_path):
    """A 48 MB fp16 gallery on disk (12,288 rows of 2,048 dims, L2-normalised) and its labels."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((12288, 2048), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    np.save(tmp_path / "g.npy", g.astype(np.float16))
    return np.load(tmp_path / "g.npy", mmap_mode="r"), rng.integers(0, 300, len(g))


def test_drop_pages_hands_a_read_memmaps_pages_back(gallery):
    g, _ = gallery
    assert _mapped_kb(g.filename) == 0
    assert float(np.asarray(g, np.float32)[:, 0].sum()) != 0  # every page read
    read = _mapped_kb(g.filename)
    drop_pages(g)
    assert read > 40 * 1024 and _mapped_kb(g.filename) < 4 * 1024
    drop_pages(np.zeros(3))  # an array in memory: nothing to do


def test_take_rows_of_a_memmap_is_the_same_rows_on_disk_and_leaves_no_file(gallery, tmp_path):
    g, _ = gallery
    keep = np.arange(len(g)) % 3 != 1
    sub = take_rows(g, keep, block_bytes=5 * MB)  # several blocks
    assert isinstance(sub, np.memmap) and np.array_equal(np.asarray(sub), np.asarray(g)[keep])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npy"]  # unlinked: freed with the array
    assert not isinstance(take_rows(np.asarray(g), keep), np.memmap)  # in memory stays in memory
    assert take_rows(g, np.zeros(len(g), bool)).shape == (0, 2048)


def test_rank_over_a_memmap_gallery_holds_its_budget_not_the_gallery(gallery):
    g, labels = gallery
    q = np.asarray(g[:300], np.float32) + 0.01
    before = _mapped_kb(g.filename)  # the rows q was read from
    got = rank([q], [g], labels, k=5, max_memory=16 * MB, log=lambda *a: None)
    held = _mapped_kb(g.filename) - before
    want = rank([q], [np.asarray(g)], labels, k=5, max_memory=16 * MB, log=lambda *a: None)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert held < 12 * 1024, f"rank kept {held} kB of the 48 MB gallery mapped"


def test_the_memmap_image_cache_is_read_not_mapped(tmp_path):
    photos = [Item(f"p{i}", _photo(tmp_path / f"p{i}.jpg", 300, 400, seed=i), "h") for i in range(3)]
    spec = CacheSpec(120, "memmap")
    build_cache({"train": photos}, spec, tmp_path / "cache", n_jobs=1, log=lambda *a: None)
    reader = ImageReader(120, spec.folder(tmp_path / "cache"), "memmap")
    for it in photos:
        got = reader(it)
        assert np.array_equal(got, read_image(it.path, 120)) and got.flags.writeable
    assert "train.u8" not in Path("/proc/self/maps").read_text()
