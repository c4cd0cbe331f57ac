"""Kaggle's accelerators (ACCELERATORS: the kernel-metadata.json machine_shape and the published peaks of each) and
which of them Kaggle's torch can compute on."""
from dataclasses import dataclass

from pipeline.core.device import arch_supported
from pipeline.core.errors import UserError


@dataclass(frozen=True)
class Accelerator:
    """One of Kaggle's accelerators: its kernel-metadata.json machine_shape and its published peaks."""
    machine_shape: str | None  # None: no GPU (enable_gpu false)
    sm: str  # CUDA architecture
    fp16_tflops: float  # dense float16 tensor-core peak
    fp32_tflops: float
    source: str


ACCELERATORS = {
    "T4": Accelerator("NvidiaTeslaT4", "sm_75", 65.0, 8.1, "NVIDIA T4 datasheet: 65 TFLOPS fp16, 8.1 fp32"),
    "L4": Accelerator("NvidiaL4", "sm_89", 121.0, 30.3, "NVIDIA L4 datasheet: 242 TFLOPS fp16 with sparsity "
                      "(121 dense), 30.3 fp32"),
    "P100": Accelerator("NvidiaTeslaP100", "sm_60", 18.7, 9.3, "NVIDIA P100 PCIe datasheet: 18.7 TFLOPS fp16, 9.3 "
                        "fp32"),
    "none": Accelerator(None, "", 0.0, 0.0, "a CPU session: this machine's measured rate per core x Kaggle's cores"),
}
# the architectures Kaggle's torch 2.10.0+cu128 is built for (torch._C._cuda_getArchFlags() of that wheel,
# installed by bench/kaggle_image.py): no sm_60, so a P100 fails at its first CUDA operation
KAGGLE_TORCH_ARCHS = ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120")


def accelerator(name: str, p100_confirmed: bool = False) -> str:
    """The ACCELERATORS key of a name (T4, l4, NvidiaTeslaT4, none ...); a P100 only when confirmed."""
    by = {k.lower(): k for k in ACCELERATORS} | {a.machine_shape.lower(): k for k, a in ACCELERATORS.items()
                                                 if a.machine_shape}
    key = by.get(str(name).lower())
    if key is None:
        raise UserError(f"--accelerator {name}: use one of {', '.join(ACCELERATORS)} (or the client's names "
                        f"{', '.join(a.machine_shape for a in ACCELERATORS.values() if a.machine_shape)})")
    sm = ACCELERATORS[key].sm
    if sm and not arch_supported((int(sm[3:-1]), int(sm[-1])), list(KAGGLE_TORCH_ARCHS)) and not p100_confirmed:
        raise UserError(f"--accelerator {name}: Kaggle's torch 2.10.0+cu128 has no {ACCELERATORS[key].sm} kernels "
                        f"(built for {' '.join(KAGGLE_TORCH_ARCHS)}), so every CUDA operation fails there and the "
                        f"kernel runs on the CPU; use T4 or L4, or give --accelerator {name} twice to insist")
    return key
