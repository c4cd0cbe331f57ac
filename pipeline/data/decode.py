"""decode: gpu (issue 25): loader workers only read each image file's bytes; the main process decodes a batch of
JPEGs at once on the compute device (torchvision.io.decode_jpeg with a list: nvJPEG's batched decoder on CUDA) and
resizes them there to the model's square size, bilinear as the CPU path's A.Resize (cv2 INTER_LINEAR: half-pixel
centres, no antialiasing), rounded to uint8: the same (B, 3, S, S) uint8 batch the CPU path hands the model, within
a level or two of its pixels (the decoders' IDCT and cv2's fixed-point weights differ).

What it applies to: embedding with the plain test pipeline (A.Compose([A.Resize(S, S)]), linear) of images read from
their source files: the gallery and test splits of embed and the kernel, and validation's gallery. image_scale > 0
is honoured: a photo whose shorter side is longer is first area-reduced to it on the device, as the CPU reader's
reduced decode + INTER_AREA does (close, not bit-equal: libjpeg's DCT scaling is not an area average).

What stays on the CPU path (said once per process, never refused): any other pipeline (the val queries' simulated hole,
a fill, multi-crop: cut and painted on the decoded image by the workers; the preprocessing keys' other choices: resize
longest or shortest, an interpolation other than bilinear, crop_pct below 1) and the image cache (image_cache=true
already hands over decoded pixels; decode=gpu is about reading source files). Per image, a loader worker decodes on the
CPU exactly as decode=cpu does every file that is not a plain 8-bit RGB or grey JPEG (PNG, WebP, CMYK, a JPEG with an
EXIF rotation: cv2 applies it, nvJPEG does not) and, in the main process, one the device decoder rejects (a truncated
file). Without a GPU the same code decodes on the CPU with torchvision (device='cpu'): what tests run."""
import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.core import distributed
from pipeline.core.errors import UserError
from pipeline.data.dataset import ImageDataset
from pipeline.data.image_cache import ImageReader

if TYPE_CHECKING:
    import albumentations as A

DECODES = ("cpu", "gpu")
NOTED: set[str] = set()  # the lines this process has said (each once)
_FLOATS_PER_STEP = 1 << 26  # float32 elements resized at once (256 MiB): a batch of huge photos goes in slices


def check(cfg: dict) -> str:
    """The decode key, checked (a config made before the key existed reads cpu)."""
    value = cfg.get("decode", "cpu")
    if value not in DECODES:
        raise UserError(f"decode={value!r}: use cpu or gpu")
    return value


def note(text: str, log=print) -> None:
    """Say text once per process (rank 0 only)."""
    if text not in NOTED:
        NOTED.add(text)
        if distributed.is_main():
            log(text)


def square_size(transform: object) -> int | None:
    """S when transform is the plain test pipeline, A.Compose([A.Resize(S, S)]) with linear interpolation and no
    area downscaling, always applied; else None (what the device decoder cannot reproduce)."""
    import albumentations as A
    import cv2

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, A.Compose) or steps is None or len(steps) != 1 or transform.p != 1:
        return None
    r = steps[0]
    if (type(r) is not A.Resize or r.p != 1 or r.height != r.width or r.interpolation != cv2.INTER_LINEAR
            or getattr(r, "area_for_downscale", None) is not None):
        return None
    return int(r.height)


def describe(cfg: dict, transform: object, reader: ImageReader | None = None) -> str:
    """What decode changes in the pixels, for embedding cache keys: '' unless the device decoder applies."""
    applies = check(cfg) == "gpu" and square_size(transform) and not (reader is not None and reader.folder)
    return "|decode gpu" if applies else ""


def plan(cfg: dict, transform: object, reader: ImageReader | None, device: str) -> "DeviceDecode | None":
    """The device decoder of one embedding pass under decode=gpu; None with decode=cpu, or where it does not apply
    (said once: the pass then decodes in the loader workers, as decode=cpu)."""
    if check(cfg) == "cpu":
        return None
    if square_size(transform) is None:
        note("decode=gpu: a pipeline other than the plain test resize (the val queries' hole, a fill, multi-crop; "
             "resize longest/shortest, interpolation other than bilinear, crop_pct < 1) decodes in the loader "
             "workers on the CPU, as decode=cpu")
        return None
    reader = reader or ImageReader()
    if reader.folder is not None:
        note("decode=gpu: image_cache=true already gives decoded pixels; decode=gpu applies only to reading source "
             "files, so the cache is read as with decode=cpu")
        return None
    if not device.startswith("cuda"):
        note(f"decode=gpu on {device}: no GPU, so torchvision decodes the batches on the CPU in the main process")
    return DeviceDecode(transform, reader, device)


def read_bytes(path) -> np.ndarray:
    try:
        return np.fromfile(path, np.uint8)
    except OSError:
        raise UserError(f"{path}: image file not found") from None


def plain_jpeg(data: np.ndarray) -> bool:
    """Whether the device decoder gives the CPU path's picture of these file bytes: a JPEG of 8-bit RGB or grey
    (not CMYK) without an EXIF rotation (cv2.imread applies one; nvJPEG ignores it). Reads the header only."""
    if data[:3].tobytes() != b"\xff\xd8\xff":
        return False
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return im.format == "JPEG" and im.mode in ("RGB", "L") and im.getexif().get(0x0112, 1) == 1
    except Exception:  # PIL cannot read the header: the CPU path decodes it, or names the file in its error
        return False


class BytesDataset(Dataset):
    """Sample i: (x, y) with x the file's bytes (uint8, 1-D) when plain_jpeg, else the CPU path's sample (uint8
    CHW, as data/dataset.ImageDataset makes it, seeded with i); y the class code or -1."""

    def __init__(self, items, transform, label_codes=None, reader=None):
        self.items, self.cpu = items, ImageDataset(items, transform, label_codes, reader)

    def __len__(self):
        return len(self.items)

    def cpu_sample(self, index: int) -> torch.Tensor:
        return self.cpu[index][0]

    def __getitem__(self, index):
        item = self.items[index]
        data = read_bytes(item.path)
        x = torch.from_numpy(data) if plain_jpeg(data) else self.cpu_sample(index)
        return (index, x), self.cpu.code(item)


def collate(batch: list) -> tuple[dict, torch.Tensor]:
    """(packed samples, labels). Packed: every JPEG's bytes in one tensor (a worker hands each tensor over through
    its own shared-memory segment: one per batch, not one per image) and the CPU-path samples stacked:
    index (B,), jpeg (B,) bool, bytes (total,) uint8 with sizes (J,), pixels (B - J, 3, S, S) uint8."""
    samples = [s for s, _ in batch]
    jpegs = [x for _, x in samples if x.dim() == 1]
    pixels = [x for _, x in samples if x.dim() != 1]
    packed = {"index": torch.tensor([i for i, _ in samples]), "jpeg": torch.tensor([x.dim() == 1 for _, x in samples]),
              "bytes": torch.cat(jpegs) if jpegs else torch.zeros(0, dtype=torch.uint8),
              "sizes": torch.tensor([len(x) for x in jpegs], dtype=torch.long),
              "pixels": torch.stack(pixels) if pixels else torch.zeros(0, dtype=torch.uint8)}
    return packed, torch.tensor([y for _, y in batch])


def resize(img: torch.Tensor, size: int, short_side: int = 0) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size) on img's device: first area-reduced so the shorter side is
    short_side (when > 0 and longer; data/images.read_image's sizes), then bilinear without antialiasing (cv2's
    INTER_LINEAR), each step rounded to uint8 as the CPU path's arrays are."""
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    x = img.float()
    if short_side and min(h, w) > short_side:
        scale = short_side / min(h, w)
        height, width = (max(1, round(h * scale)), short_side) if w <= h else (short_side, max(1, round(w * scale)))
        x = F.interpolate(x, (height, width), mode="area").round_().clamp_(0, 255)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


class DeviceDecode:
    """One embedding pass's decoding on `device`: its dataset (workers read bytes) and batch(samples) -> the uint8
    (B, 3, S, S) batch on the device."""

    def __init__(self, transform: "A.Compose", reader: ImageReader, device: str):
        self.transform, self.reader, self.device = transform, reader, device
        self.size, self.short_side = square_size(transform), reader.short_side
        self.data = None

    def dataset(self, items, label_codes=None) -> BytesDataset:
        self.data = BytesDataset(items, self.transform, label_codes, self.reader)
        return self.data

    def _decode(self, jpegs: list[torch.Tensor], indices: list[int]) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 images on the device: one batched decode; if that fails, each on its own, None for a file
        the device decoder rejects (said once per file)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if self.device.startswith("cuda"):
            # nvJPEG decodes on a stream of its own into memory allocated on ours, without waiting for ours (pytorch/
            # vision PR 9606): nothing of ours may still be queued. embed_items' stream is idle here (its last batch
            # came back to the host), so this costs nothing there
            torch.cuda.current_stream(self.device).synchronize()
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec's, at every call
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:
                pass
            out = []
            for data, i in zip(jpegs, indices):
                try:
                    out.append(decode_jpeg([data], mode=ImageReadMode.RGB, device=self.device)[0])
                except RuntimeError as e:
                    why = " ".join(str(e).split()).rsplit(", ", 1)[-1][:200]  # torchvision: "op, file:line, why"
                    note(f"decode=gpu: {self.data.items[i].path}: the device decoder failed ({why}); decoded on the "
                         "CPU")
                    out.append(None)
            return out

    def batch(self, packed: dict) -> torch.Tensor:
        """The uint8 (B, 3, S, S) batch on the device of a loader batch (collate's packed samples)."""
        index, is_jpeg = packed["index"].tolist(), packed["jpeg"].tolist()
        jpeg = [k for k, j in enumerate(is_jpeg) if j]
        other = [k for k, j in enumerate(is_jpeg) if not j]
        files = torch.split(packed["bytes"], packed["sizes"].tolist())
        images = self._decode(list(files), [index[k] for k in jpeg]) if jpeg else []  # first: see _decode
        out = torch.empty((len(index), 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        if other:  # the workers' CPU-path samples: already the model's size
            note("decode=gpu: images that are not plain 8-bit JPEGs (PNG, CMYK, an EXIF rotation) are decoded in the "
                 "loader workers, as decode=cpu")
            out[other] = packed["pixels"].to(self.device, non_blocking=True)
        shapes: dict[tuple, list] = {}  # same-sized images are resized together
        for k, img in zip(jpeg, images):
            if img is None:
                out[k] = self.data.cpu_sample(index[k]).to(self.device)
            else:
                shapes.setdefault(tuple(img.shape), []).append((k, img))
        for shape, group in shapes.items():
            step = max(1, _FLOATS_PER_STEP // int(np.prod(shape)))
            for j in range(0, len(group), step):
                ks, imgs = zip(*group[j:j + step])
                x = imgs[0][None] if len(imgs) == 1 else torch.stack(imgs)
                out[list(ks)] = resize(x, self.size, self.short_side)
        return out
