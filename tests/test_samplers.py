from collections import Counter

import numpy as np
import pytest

from pipeline.core.errors import UserError
from pipeline.data.samplers import SAMPLERS, build_sampler

# unbalanced on purpose: class c has c + 1 images (1..12), 78 items, shuffled so classes are not contiguous
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(12), np.arange(1, 13))).tolist()
SECTIONS = {"random": {}, "m_per_class": {"n": 4}, "repeated_aug": {"repeats": 3}}
BS = 12


def _make(name, seed=7, epoch=0, start=0, labels=LABELS, bs=BS, **section):
    return SAMPLERS[name](labels, bs, seed, epoch, start, **{**SECTIONS[name], **section})


def _cfg(sampler, batch_size=BS, **sections):
    return {"sampler": sampler, "batch_size": batch_size, "seed": 3, **SECTIONS, **sections}


@pytest.mark.parametrize("name", SAMPLERS)
def test_full_batches_in_range(name):
    s = _make(name)
    batches = list(s)
    assert len(batches) == s.num_batches == len(s) > 0
    for b in batches:
        assert len(b) == BS
        assert all(isinstance(i, int) and isinstance(t, int) and 0 <= i < len(LABELS) for i, t in b)


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_batches_and_other_epoch_or_seed_differs(name):
    assert list(_make(name)) == list(_make(name))
    assert list(_make(name, epoch=1)) != list(_make(name))
    assert list(_make(name, seed=8)) != list(_make(name))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("start", [1, 3])
def test_resume_yields_the_remaining_batches(name, start):
    full = list(_make(name, epoch=2))
    resumed = _make(name, epoch=2, start=start)
    assert resumed.num_batches == len(full) and len(resumed) == len(full) - start
    assert list(resumed) == full[start:]


def test_random_keeps_the_legacy_order():
    # golden values of the first sampler's order: existing runs must resume on the same batches
    batches = list(SAMPLERS["random"](range(20), 4, 42, 3, start=1))
    assert batches[0] == [(19, 1314201211), (18, 493854363), (13, 1292154390), (8, 494194066)]


@pytest.mark.parametrize("n", [2, 4])
def test_m_per_class_every_class_and_image_each_epoch(n):
    s = _make("m_per_class", n=n)
    k, batches = BS // n, list(s)
    groups = -(-np.bincount(LABELS) // n)
    assert s.num_batches == max(-(-groups.sum() // k), groups.max())
    for b in batches:
        per_class = Counter(LABELS[i] for i, _ in b)
        assert len(per_class) == k and set(per_class.values()) == {n}
        for j in range(0, BS, n):  # a class's n images sit together in the batch
            assert len({LABELS[i] for i, _ in b[j:j + n]}) == 1
    seen = {i for b in batches for i, _ in b}
    assert seen == set(range(len(LABELS)))  # so every class too, the 1-image class included
    assert len({t for b in batches for _, t in b}) > 0.95 * s.num_batches * BS  # per-occurrence seeds


def test_m_per_class_dominant_class_sets_the_epoch_length():
    labels = [0] * 40 + [1, 2, 3, 4, 5]  # class 0 alone needs 10 groups of 4, one per batch
    s = SAMPLERS["m_per_class"](labels, 8, 0, 0, n=4)
    batches = list(s)
    assert s.num_batches == len(batches) == 10
    assert all(len({labels[i] for i, _ in b}) == 2 for b in batches)
    assert {i for b in batches for i, _ in b} == set(range(len(labels)))


def test_repeated_aug_contiguous_replicas_with_own_seeds():
    s = _make("repeated_aug")
    batches = list(s)
    assert s.num_batches == len(batches) == len(LABELS) // BS
    for b in batches:
        for j in range(0, BS, 3):
            copies = b[j:j + 3]
            assert len({i for i, _ in copies}) == 1 and len({t for _, t in copies}) == 3
    firsts = [b[j][0] for b in batches for j in range(0, BS, 3)]
    assert len(firsts) == len(set(firsts))  # an image's copies never spill into another group or batch


def test_build_sampler_passes_the_config():
    s = build_sampler(_cfg("m_per_class", m_per_class={"n": 2}), LABELS, epoch=1, start=2)
    assert (type(s).__name__, s.n, s.batch_size, s.seed, s.epoch, s.start) == ("MPerClassBatches", 2, BS, 3, 1, 2)
    assert list(build_sampler(_cfg("random"), LABELS, 0)) == list(SAMPLERS["random"](LABELS, BS, 3, 0))


@pytest.mark.parametrize("cfg, labels, key", [
    (_cfg("balanced"), LABELS, "sampler='balanced'"),
    (_cfg("m_per_class", m_per_class={"n": 5}), LABELS, "m_per_class.n=5"),
    (_cfg("m_per_class", batch_size=32, m_per_class={"n": 2}), LABELS, "m_per_class.n=2"),  # 16 classes > 12
    (_cfg("repeated_aug", repeated_aug={"repeats": 5}), LABELS, "repeated_aug.repeats=5"),
    (_cfg("random"), LABELS[:BS - 1], "batch_size=12"),
    (_cfg("m_per_class"), LABELS[:BS - 1], "batch_size=12"),
])
def test_build_sampler_errors_name_the_key(cfg, labels, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as e:
        build_sampler(cfg, labels, 0)
    assert "\n" not in str(e.value)


def test_m_per_class_repeats_gives_adjacent_replicas_of_every_image():
    labels = np.repeat(np.arange(12), np.arange(1, 13))
    s = SAMPLERS["m_per_class"](labels, 16, seed=3, epoch=0, n=4, repeats=2)
    batches = list(s)
    seen = set()
    for b in batches:
        idx = [i for i, _ in b]
        assert len(b) == 16 and idx[0::2] == idx[1::2]  # pairs of one image
        assert all(b[j][1] != b[j + 1][1] for j in range(0, 16, 2))  # augmented independently
        classes = [labels[i] for i in idx]
        assert len(set(classes)) == 4 and all(classes.count(c) == 4 for c in set(classes))
        seen.update(idx)
    assert seen == set(range(len(labels)))
    with pytest.raises(UserError, match="m_per_class.repeats=3"):
        build_sampler({"sampler": "m_per_class", "batch_size": 16, "seed": 0, "m_per_class": {"n": 4, "repeats": 3}},
                      labels, 0)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("start", [0, 2])
def test_shards_are_disjoint_rows_of_the_same_global_batches(name, world, start):
    # DDP: process r takes rows r::world of each global batch; put back together they are the one-process batches
    full = list(_make(name, epoch=1, start=start))
    shares = [list(_make(name, epoch=1, start=start).shard(r, world)) for r in range(world)]
    assert all(len(s) == len(full) for s in shares)
    for b, batch in enumerate(full):
        rebuilt = [None] * BS
        for r in range(world):
            assert len(shares[r][b]) == BS // world
            rebuilt[r::world] = shares[r][b]
        assert rebuilt == batch


def test_build_sampler_shards_and_refuses_a_batch_the_processes_cannot_share():
    one = list(build_sampler(_cfg("random"), LABELS, 0))
    assert [b[1::2] for b in one] == list(build_sampler(_cfg("random"), LABELS, 0, rank=1, world=2))
    with pytest.raises(UserError, match="batch_size=12 cannot be shared by 5 processes") as e:
        build_sampler(_cfg("random"), LABELS, 0, rank=0, world=5)
    assert "\n" not in str(e.value)
