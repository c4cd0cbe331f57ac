"""The kernel's projected run time on one of Kaggle's accelerators (kernel/accelerators.py).

The projection, printed by `./run.sh kernel` before anything is uploaded, is arithmetic on three parts:
- the models: each model's forward FLOPs at its input size (counted by torch's FlopCounterMode on the meta device,
  so no weights and no compute), times the views the tricks make of each test photo (flip x2, crops, rotation x4,
  +1 forward for the upright classifier), over the accelerator's published float16 throughput times UTILISATION;
- decoding: one 1024-px JPEG read and resized with the pipeline's reader, timed here on one core, once per photo
  per model (the kernel reads each photo again for each model), spread over the session's CPU cores;
- ranking: the query-gallery similarity products in float32 at the same utilisation.
Decoding overlaps the forwards (the loader's workers run ahead), so the total is the larger of the two plus the
ranking."""
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.kernel.accelerators import ACCELERATORS

# Achieved over published peak for these backbones in eager PyTorch with autocast. From timm's own benchmark (SPEC
# section 9, RTX 3090, 71 TFLOPS dense fp16 peak): efficientnet_b3 @288 trains 457 img/s, at ~3.0 GFLOPs a forward
# and ~3x that a training step: 4.1 TFLOPS, 6%; vit_small_patch16_384 239 img/s at ~24.8 GFLOPs: 17.8 TFLOPS, 25%.
# Inference runs nearer the top of that range (no backward); 0.10 sits between, on the side of a longer projection.
UTILISATION = 0.10
# Kaggle's documentation: each notebook session has 4 CPU cores (its "Technical Specifications"; not in the image's
# published files, so a documented figure, not one measured here)
KAGGLE_CPU_CORES = 4


@dataclass
class ModelCost:
    name: str
    image_size: int
    gflops: float  # one forward of one image
    views: int  # forwards per test photo


@dataclass
class Projection:
    accelerator: str
    images: int
    models: list
    decode_s: float
    model_s: float
    rank_s: float
    limit_s: float

    @property
    def total_s(self) -> float:
        return max(self.decode_s, self.model_s) + self.rank_s

    def lines(self) -> list[str]:
        acc = ACCELERATORS[self.accelerator]
        out = [f"run-time projection on {self.accelerator} for {self.images} test photos "
               f"(kernel_test_images; {acc.source}" + (f"; utilisation {UTILISATION:.2f}):" if acc.machine_shape
                                                        else "):")]
        for m in self.models:
            out.append(f"  {m.name}: {m.gflops:.1f} GFLOPs/forward at {m.image_size}px x {m.views} views = "
                       f"{m.gflops * m.views * self.images / 1e3:.1f} TFLOPs")
        out.append(f"  models {_hours(self.model_s)}, decoding {_hours(self.decode_s)} (overlapped), ranking "
                   f"{_hours(self.rank_s)}: total {_hours(self.total_s)} of the {_hours(self.limit_s)} limit "
                   f"(kernel_time_limit_hours)")
        if self.total_s > self.limit_s / 2:
            bound = "decoding" if self.decode_s > self.model_s else "the models' FLOPs"
            out.append(f"WARNING: the projection is above half the limit; bounded by {bound}: fewer views "
                       "(flip, crops, rotate), smaller inputs or fewer models bring it down")
        return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def forward_gflops(cfg: dict, image_size: int) -> float:
    """GFLOPs of one forward of one image through cfg's model at image_size (counted on the meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.model.embedder import build_model

    with torch.device("meta"):
        model, _ = build_model(cfg, with_weights=False)
        x = torch.empty(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def decode_seconds(image_size: int, side: int = 1024) -> float:
    """Seconds to read and resize one side x 3/4 side JPEG with the pipeline's reader on one core, median of 5."""
    import cv2
    import numpy as np

    from pipeline.data.images import read_image

    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8), (9, 9), 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 90])
        times = []
        for _ in range(5):
            t = time.perf_counter()
            read_image(path, image_size)
            times.append(time.perf_counter() - t)
    return sorted(times)[2]


def cpu_gflops_per_core() -> float:
    """This machine's float32 convolution rate on one core, for the CPU-session projection."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        conv = torch.nn.Conv2d(64, 64, 3, padding=1)
        x = torch.randn(8, 64, 56, 56)
        with torch.no_grad():
            conv(x)
            t = time.perf_counter()
            conv(x)
            seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    return 2 * 8 * 64 * 64 * 9 * 56 * 56 / seconds / 1e9


def project(models: list[ModelCost], accelerator_key: str, images: int, gallery: int, dim: int, query_views: int,
            limit_hours: float, decode_s: float) -> Projection:
    """The projection for these models' costs, decode_s seconds per photo and model (one core)."""
    acc = ACCELERATORS[accelerator_key]
    if acc.machine_shape:
        rate, rank_rate = acc.fp16_tflops * 1e12 * UTILISATION, acc.fp32_tflops * 1e12 * UTILISATION
    else:
        rate = rank_rate = cpu_gflops_per_core() * 1e9 * KAGGLE_CPU_CORES
    flops = sum(m.gflops * 1e9 * m.views for m in models) * images
    rank_flops = 2.0 * images * query_views * gallery * dim
    return Projection(accelerator_key, images, models, decode_s * images * len(models) / KAGGLE_CPU_CORES,
                      flops / rate, rank_flops / rank_rate, limit_hours * 3600)


def project_runs(cfgs: list[dict], image_sizes: list[int], tricks: dict, accelerator_key: str, gallery: int,
                 names: list[str] | None = None) -> Projection:
    """The projection for an ensemble of configs (their models at image_sizes) with these inference tricks, at the
    first config's kernel_test_images and kernel_time_limit_hours, against a gallery of that many images."""
    from pipeline.retrieval.embeddings import Variant

    variant = Variant.of(tricks)
    turns = 4 if tricks.get("rotate") else 1
    views = (2 if variant.flip else 1) * max(1, variant.crops("test")) * turns + (1 if variant.upright else 0)
    models = [ModelCost(name, size, forward_gflops(cfg, size), views)
              for name, cfg, size in zip(names or [c["name"] for c in cfgs], cfgs, image_sizes)]
    dim = sum(c["embedding_dim"] for c in cfgs)
    return project(models, accelerator_key, cfgs[0]["kernel_test_images"], gallery, dim, turns,
                   cfgs[0]["kernel_time_limit_hours"], decode_seconds(max(image_sizes)))
