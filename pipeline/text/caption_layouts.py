"""CAPTION_LAYOUTS: how a caption file is laid out (captions.layout) -> a reader of (image name or id,
caption) pairs. csv = `image_id,caption` with the dataset's image ids (make-data's captions.csv); flickr30k =
Flickr30k's results file `image_name| comment_number| comment` (pipe-separated, five per image) or its token file
`image_name#n<TAB>caption`, image names matched to the dataset's image files by file name."""
from pathlib import Path

from pipeline.core.errors import UserError


def _csv(path):
    from pipeline.core.io import read_table

    rows = read_table(path, required=["image_id", "caption"])
    return list(zip(rows["image_id"], rows["caption"]))


def _flickr30k(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or (n == 1 and line.replace(" ", "").startswith("image_name|")):
            continue
        if "\t" in line:  # the token file: name.jpg#0<TAB>caption
            name, _, text = line.partition("\t")
            name = name.split("#")[0]
        else:
            parts = line.split("|", 2)  # a comment may itself hold a pipe
            if len(parts) < 3:
                raise UserError(f"{path}:{n}: '{line[:60]}' is neither 'image_name| comment_number| comment' nor "
                                "'image_name#n<TAB>caption' (captions.layout=flickr30k)")
            name, text = parts[0], parts[2]
        pairs.append((name.strip(), text.strip()))
    return pairs


CAPTION_LAYOUTS = {"csv": _csv, "flickr30k": _flickr30k}
