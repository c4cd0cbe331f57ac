"""Torch datasets (batch samplers: samplers.py). A sample is addressed by (index, seed): its augmentation
depends on nothing else, so results are identical for any number of loader workers and after a resume. Samples are
uint8 CHW tensors: the model normalises them on its device (model/embedder.py), so a worker hands over a quarter of
the bytes of float32 and the device, not the loader's CPU, does the arithmetic."""
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from pipeline.data.image_cache import ImageReader
from pipeline.data.images import default_workers
from pipeline.data.transforms import apply

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


class ImageDataset(Dataset):
    """reader: item -> RGB uint8 HWC (data/image_cache.ImageReader: the image cache or the source file); a sample's
    target is its class code, or targets(item, seed) when given (a clip run's caption tokens)."""

    def __init__(self, items, transform, label_codes=None, reader=None, targets=None):
        self.items, self.transform, self.codes, self.targets = items, transform, label_codes, targets
        self.reader = reader or ImageReader()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        item = self.items[index]
        x = torch.from_numpy(apply(self.transform, self.reader(item), seed))
        if self.targets is not None:
            return x, self.targets(item, seed)
        return x, self.code(item)

    def code(self, item) -> int:
        """The item's class code; -1 without codes or a label (test images)."""
        return self.codes[item.label] if self.codes is not None and item.label is not None else -1


class MultiCropDataset(Dataset):
    """Sample i: (the kept crops of item i as a uint8 (k, C, S, S) tensor, k); transforms.MultiCrop views,
    seeded with i (the val pipeline's hole is the only random step)."""

    def __init__(self, items, multicrop, reader=None):
        self.items, self.multicrop = items, multicrop
        self.reader = reader or ImageReader()

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        views = self.multicrop.views(self.reader(self.items[index]), index)
        return torch.from_numpy(views), len(views)


def collate_crops(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    """(all crops of the batch concatenated, [crop count per image])."""
    return torch.cat([x for x, _ in batch]), [k for _, k in batch]


def loader(dataset: Dataset, batch_sampler: Iterable[list], num_workers: int = 0, device: str = "cpu",
           collate_fn: Callable | None = None) -> "DataLoader":
    """DataLoader over the given batches (a sampler or a list of index lists) with worker processes (< 0: one per
    CPU, at most 8); an explicit generator so loading never consumes the global RNG."""
    from torch.utils.data import DataLoader

    num_workers = default_workers() if num_workers < 0 else num_workers
    kw = dict(num_workers=num_workers, pin_memory=device == "cuda", generator=torch.Generator().manual_seed(0))
    if collate_fn is not None:
        kw["collate_fn"] = collate_fn
    if num_workers:
        kw.update(persistent_workers=False, prefetch_factor=4)
    return DataLoader(dataset, batch_sampler=batch_sampler, **kw)
