"""Captions of a dataset's images, read through a caption layout (CAPTION_LAYOUTS) into a Captions record, and the
training targets a CLIP batch draws from them: one tokenised caption per image, picked by the sample's seed.

Layouts (captions.layout): csv = `image_id,caption` with the dataset's image ids (make-data's captions.csv);
flickr30k = Flickr30k's results file `image_name| comment_number| comment` (pipe-separated, five per image) or its
token file `image_name#n<TAB>caption`, image names matched to the dataset's image files by file name."""
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.text.caption_layouts import CAPTION_LAYOUTS


@dataclass
class Captions:
    """Caption i is texts[i], describing the image image_ids[i] (a dataset image id)."""
    image_ids: list
    texts: list

    def __len__(self) -> int:
        return len(self.texts)

    def of(self, items) -> "Captions":
        """The captions of these items, in item order (an item's captions in file order)."""
        by_image = self.by_image()
        rows = [i for it in items for i in by_image.get(it.image_id, [])]
        return Captions([self.image_ids[i] for i in rows], [self.texts[i] for i in rows])

    def by_image(self) -> dict:
        """{image id: [caption rows]}."""
        out = defaultdict(list)
        for i, image_id in enumerate(self.image_ids):
            out[image_id].append(i)
        return dict(out)


def caption_file(cfg: dict) -> Path:
    path = Path(cfg["captions"]["file"])
    return path if path.is_absolute() else Path(cfg["data"]) / path


def read_captions(cfg: dict, ds) -> Captions:
    """The captions of dataset ds (data/layouts.Dataset) from the config's caption file; every caption must name
    one of its images (train or test); images may have none."""
    path, layout = caption_file(cfg), cfg["captions"]["layout"]
    if layout not in CAPTION_LAYOUTS:
        raise UserError(f"captions.layout={layout!r}: use one of {', '.join(CAPTION_LAYOUTS)}")
    if not path.is_file():
        raise UserError(f"{path}: no caption file (captions.file={cfg['captions']['file']!r}); the demo data has one "
                        f"from ./run.sh make-data --out {cfg['data']}, or point captions.file at yours")
    pairs = CAPTION_LAYOUTS[layout](path)
    items = ds.train + ds.test
    ids = {it.image_id for it in items}
    if layout == "flickr30k":  # its names are file names: the dataset's id of each
        by_name = {it.path.name: it.image_id for it in items}
        pairs = [(by_name.get(name, name), text) for name, text in pairs]
    unknown = next((image_id for image_id, _ in pairs if image_id not in ids), None)
    if unknown is not None:
        raise UserError(f"{path}: '{unknown}' is not an image of {ds.root}; captions must name its images")
    if not pairs:
        raise UserError(f"{path}: no captions")
    return Captions([str(a) for a, _ in pairs], [str(b) for _, b in pairs])


class CaptionTargets:
    """What a CLIP batch trains on instead of class codes: for a sample (item, seed), one of the item's tokenised
    captions, the same one for the same seed (so any number of loader workers and a resume see the same batches)."""

    def __init__(self, captions: Captions, tokens: np.ndarray):
        self.tokens, self.rows = tokens, captions.by_image()

    def covers(self, items) -> list:
        """The items that have captions (the ones a CLIP run can train on)."""
        return [it for it in items if it.image_id in self.rows]

    def __call__(self, item, seed: int):
        import torch

        rows = self.rows[item.image_id]
        return torch.from_numpy(self.tokens[rows[seed % len(rows)]])


@dataclass
class TextData:
    """What a clip run trains and validates on besides the images: the training targets and the held-out captions
    (the validation images')."""
    targets: CaptionTargets
    val: Captions


def text_data(cfg: dict, ds, train_items: list, val_items: list, log=print) -> "tuple[TextData | None, list]":
    """(TextData, the training items that have captions) for head=clip; (None, train_items) for any other head."""
    if cfg["head"] != "clip":
        return None, train_items
    from pipeline.model.clip import tokenize

    captions = read_captions(cfg, ds)
    train = captions.of(train_items)
    targets = CaptionTargets(train, tokenize(train.texts, cfg["clip"]["context"]))
    kept = targets.covers(train_items)
    if not kept:
        raise UserError(f"{caption_file(cfg)}: none of the {len(train_items)} training images has a caption")
    val = captions.of(val_items)
    log(f"captions: {len(train)} for {len(kept)} of {len(train_items)} training images, {len(val)} held out "
        f"(validation images) from {caption_file(cfg)}")
    return TextData(targets, val), kept
