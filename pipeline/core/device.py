"""The device a computation runs on, and mixed precision where it pays (CUDA only)."""
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch


def pick_device(want: str = "auto") -> str:
    """'cuda' when want is 'auto' and a GPU is usable, else 'cpu'; an explicit 'cpu' or 'cuda[:N]' is kept when it
    is usable here, else a one-line UserError. 'cpu' never imports torch (numpy-only callers stay light)."""
    if want == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if want == "auto":
        return "cuda" if available else "cpu"
    if str(want).startswith("cuda") and available:
        return str(want)
    raise UserError(f"device {want!r} is not available here; use 'cpu' or 'auto'")


def autocast(device: str, enabled: bool) -> "torch.autocast":
    import torch

    # Mixed precision only on CUDA: bf16/fp16 on this kind of CPU is 10-300x slower than fp32.
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device == "cuda")
