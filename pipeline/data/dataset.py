"""Torch datasets (batch samplers: samplers.py). A sample is addressed by (index, seed): its augmentation
depends on nothing else, so results are identical for any number of loader workers and after a resume."""
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from pipeline.data.images import read_image
from pipeline.data.transforms import apply

if TYPE_CHECKING:
    from torch.utils.data import DataLoader


class ImageDataset(Dataset):
    def __init__(self, items, transform, label_codes=None):
        self.items, self.transform, self.codes = items, transform, label_codes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        item = self.items[index]
        x = torch.from_numpy(apply(self.transform, read_image(item.path), seed))
        y = self.codes[item.label] if self.codes is not None and item.label is not None else -1
        return x, y


class MultiCropDataset(Dataset):
    """Sample i: (the kept crops of item i as a float32 (k, C, S, S) tensor, k); transforms.MultiCrop views,
    seeded with i (the val pipeline's hole is the only random step)."""

    def __init__(self, items, multicrop):
        self.items, self.multicrop = items, multicrop

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        views = self.multicrop.views(read_image(self.items[index].path), index)
        return torch.from_numpy(views), len(views)


def collate_crops(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    """(all crops of the batch concatenated, [crop count per image])."""
    return torch.cat([x for x, _ in batch]), [k for _, k in batch]


def loader(dataset: Dataset, batch_sampler: Iterable[list], num_workers: int = 0, device: str = "cpu",
           collate_fn: Callable | None = None) -> "DataLoader":
    """DataLoader over the given batches (a sampler or a list of index lists) with worker processes; an explicit
    generator so loading never consumes the global RNG."""
    from torch.utils.data import DataLoader

    kw = dict(num_workers=num_workers, pin_memory=device == "cuda", generator=torch.Generator().manual_seed(0))
    if collate_fn is not None:
        kw["collate_fn"] = collate_fn
    if num_workers:
        kw.update(persistent_workers=False, prefetch_factor=4)
    return DataLoader(dataset, batch_sampler=batch_sampler, **kw)
