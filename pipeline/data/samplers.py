"""Batch samplers: each epoch is a pure function of (seed, epoch), so a run resumed mid-epoch (`start` = batches
already done) sees exactly the batches it would have seen. Batches are lists of (index, sample_seed); every
occurrence has its own sample_seed, so repeated copies of one image are augmented independently.

Every sampler is distribution-aware through the base class: after .shard(rank, world), each global batch yields
only its rows rank::world, so N processes see disjoint shares of the same global batches as one process (for any
N dividing the batch size, and after a resume with another N)."""
from collections.abc import Sequence
from typing import Self

import numpy as np
from torch.utils.data import Sampler

from pipeline.core.errors import UserError


class _EpochSampler(Sampler):
    salt = ()  # extra entropy per sampler kind, so kinds sharing a seed don't share an order

    def __init__(self, labels, batch_size, seed, epoch, start=0):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size, self.seed, self.epoch, self.start = batch_size, seed, epoch, start
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> Self:
        """Yield only rows rank::world of each batch (DDP: this process's share of the global batch)."""
        if world < 1 or not 0 <= rank < world or self.batch_size % world:
            raise ValueError(f"rank {rank} of {world} processes cannot share batches of {self.batch_size}")
        self.rank, self.world = rank, world
        return self

    def __len__(self):
        return max(0, self.num_batches - self.start)

    def __iter__(self):
        # the whole epoch is drawn even when resuming: skipping batches must not change the RNG stream
        index, seeds = self._epoch(np.random.default_rng([self.seed, self.epoch, *self.salt]))
        for b in range(self.start, self.num_batches):
            yield [(int(i), int(s)) for i, s in zip(index[b][self.rank::self.world], seeds[b][self.rank::self.world])]


class RandomBatches(_EpochSampler):
    """Shuffled full batches, each image at most once; the remainder of len(labels) / batch_size is dropped."""

    @property
    def num_batches(self) -> int:
        return len(self.labels) // self.batch_size

    def _epoch(self, rng):
        # draw order (permutation, then per-index seeds) is frozen: runs started before the registry resume identically
        n, used = len(self.labels), self.num_batches * self.batch_size
        order = rng.permutation(n)
        seeds = rng.integers(0, 2**31, size=n)
        return order[:used].reshape(-1, self.batch_size), seeds[order[:used]].reshape(-1, self.batch_size)


class MPerClassBatches(_EpochSampler):
    """k = batch_size // n distinct classes x n images per batch; every class and every image appears each epoch.

    Each class's shuffled images are cut into groups of n (a short last group is topped up from the same class,
    with replacement only when the class has fewer than n images). Epoch length, independent of the epoch:
        num_batches = max(ceil(G / k), g_max),  G = sum over classes of ceil(size / n), g_max = largest class's G
    (no batch can hold two groups of one class, so the biggest class needs g_max batches). Batches left short
    of k groups are topped up with random groups of classes absent from that batch.
    repeats = r > 1 (for LossTransform) makes each of a class's n rows r adjacent, independently augmented copies
    of n / r images; the epoch still shows every image (r times), so it costs r times as many batches."""
    salt = (1,)

    def __init__(self, labels, batch_size, seed, epoch, start=0, n=4, repeats=1):
        super().__init__(labels, batch_size, seed, epoch, start)
        if repeats < 1 or n % repeats:
            raise ValueError(f"m_per_class: repeats={repeats} must divide n={n}")
        self.repeats, n = repeats, n // repeats
        self.n, self.k = n, batch_size // (n * repeats)
        self.classes, inverse = np.unique(self.labels, return_inverse=True)
        self.members = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        if n < 1 or batch_size % (n * repeats) or self.k > len(self.classes):
            raise ValueError(f"m_per_class: batch_size={batch_size} needs n dividing it and at most "
                             f"{len(self.classes)} classes per batch (n={n})")
        g = [-(-len(m) // n) for m in self.members]
        self.num_batches = max(-(-sum(g) // self.k), max(g))

    def _epoch(self, rng):
        n, k, nb = self.n, self.k, self.num_batches
        groups = []  # (class, images), class-contiguous: a stride-nb deal then never puts one class twice in a bin
        for c in rng.permutation(len(self.classes)):
            imgs = rng.permutation(self.members[c])
            rem = len(imgs) % n
            if rem:  # fill from the other groups' images so a group repeats an image only if the class is tiny
                pool = imgs[:-rem] if len(imgs) >= n else imgs
                imgs = np.concatenate([imgs, rng.choice(pool, n - rem, replace=len(imgs) < n)])
            groups += [(c, imgs[i:i + n]) for i in range(0, len(imgs), n)]
        bins = [groups[b::nb] for b in range(nb)]
        for b in bins:
            if len(b) < k:
                absent = np.setdiff1d(np.arange(len(self.classes)), [c for c, _ in b])
                for c in rng.choice(absent, k - len(b), replace=False):
                    m = self.members[c]
                    b.append((c, rng.choice(m, n, replace=len(m) < n)))
        index = np.stack([np.concatenate([g for _, g in bins[b]]) for b in rng.permutation(nb)])
        index = np.repeat(index, self.repeats, axis=1)  # copies adjacent: LossTransform's replica groups
        return index, rng.integers(0, 2**31, size=index.shape)


class RepeatedAugBatches(_EpochSampler):
    """Repeated augmentation (DeiT's RASampler, one process): each shuffled image `repeats` times in a row, cut
    to the usual len(labels) // batch_size batches, so an epoch costs the same but sees ~1/repeats of the images.
    batch_size % repeats == 0 keeps each image's copies contiguous and inside one batch (LossTransform reads
    consecutive groups of `repeats` rows as replicas of one image)."""
    salt = (2,)

    def __init__(self, labels, batch_size, seed, epoch, start=0, repeats=3):
        super().__init__(labels, batch_size, seed, epoch, start)
        if repeats < 1 or batch_size % repeats:
            raise ValueError(f"repeated_aug: repeats={repeats} must divide batch_size={batch_size}")
        self.repeats, self.num_batches = repeats, len(self.labels) // batch_size

    def _epoch(self, rng):
        used = self.num_batches * self.batch_size
        index = np.repeat(rng.permutation(len(self.labels)), self.repeats)[:used].reshape(-1, self.batch_size)
        return index, rng.integers(0, 2**31, size=index.shape)


SAMPLERS = {"random": RandomBatches, "m_per_class": MPerClassBatches, "repeated_aug": RepeatedAugBatches}


def build_sampler(cfg: dict, labels: Sequence[int] | np.ndarray, epoch: int, start: int = 0, rank: int = 0,
                  world: int = 1) -> _EpochSampler:
    """The configured sampler for one epoch, sharded for process rank of world; config mistakes become one-line
    UserErrors."""
    name, bs = cfg["sampler"], cfg["batch_size"]
    if bs % world:
        raise UserError(f"batch_size={bs} cannot be shared by {world} processes: use a multiple of {world} (it is "
                        "the global batch; each process gets batch_size / nproc)")
    if name not in SAMPLERS:
        raise UserError(f"sampler={name!r} is unknown: use one of {', '.join(SAMPLERS)}")
    section = dict(cfg.get(name) or {})
    if bs < 1 or len(labels) < bs:
        raise UserError(f"batch_size={bs}: the training split has {len(labels)} images, fewer than one batch; "
                        "lower batch_size")
    if name == "m_per_class":
        n, classes, r = section.get("n", 4), len(set(labels)), section.get("repeats", 1)
        if r < 1 or n % r:
            raise UserError(f"m_per_class.repeats={r} must divide m_per_class.n={n}: pick repeats from its divisors")
        if n < 1 or bs % n:
            raise UserError(f"m_per_class.n={n} must divide batch_size={bs}: pick n from its divisors")
        if bs // n > classes:
            raise UserError(f"m_per_class.n={n}: batch_size={bs} needs {bs // n} classes per batch but the "
                            f"training split has {classes}; raise m_per_class.n or lower batch_size")
    if name == "repeated_aug":
        r = section.get("repeats", 3)
        if r < 1 or bs % r:
            raise UserError(f"repeated_aug.repeats={r} must divide batch_size={bs}: pick repeats from its divisors")
    return SAMPLERS[name](labels, bs, cfg["seed"], epoch, start, **section).shard(rank, world)
