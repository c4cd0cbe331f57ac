"""The device a computation runs on, checked for real, and mixed precision where it pays (CUDA only).

torch.cuda.is_available() is not enough: a build without kernels for the GPU's architecture (Kaggle's cu128 torch on
a P100, sm_60) reports True and fails at the first operation, and a driver older than the build's CUDA makes it
report False with only a warning. cuda_check() names which of these it is, so `auto` can say so before it falls
back to the CPU and an explicit `cuda` can fail at once with the fix."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass
class CudaCheck:
    """Whether torch can compute on the first visible GPU here; if not, why and what to do."""
    usable: bool
    name: str = ""
    capability: tuple = ()
    why: str = ""
    fix: str = ""


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU on this machine, whether torch can use it or not (its kernel driver is loaded)."""
    return Path("/proc/driver/nvidia/version").is_file() or Path("/dev/nvidia0").exists()


def arch_supported(capability: tuple, arch_list: list[str]) -> bool:
    """Whether a build with these architectures runs on a GPU of this capability: a cubin for sm_XY runs on the same
    major X at minor >= Y; PTX for compute_XY is compiled at load for any capability >= XY."""
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        a_major, a_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def cuda_check() -> CudaCheck:
    """Probe the first visible GPU: seen by torch, an architecture this build has kernels for, a first operation
    that runs."""
    import torch

    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return CudaCheck(False, why="this torch is a CPU-only build",
                             fix="install a CUDA build of torch (requirements.txt pins one)")
        if hidden is not None and hidden.strip() in ("", "-1", "none", "void"):
            return CudaCheck(False, why=f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU",
                             fix="unset CUDA_VISIBLE_DEVICES or name a GPU in it")
        try:
            torch.cuda.init()
            cause = "torch sees no CUDA device"
        except Exception as e:  # torch's own words: no driver, or one too old for this build's CUDA
            cause = str(e).strip().splitlines()[0].split(". ")[0].rstrip(".")
        if "too old" in cause:
            return CudaCheck(False, why=cause, fix=f"update the NVIDIA driver to one for CUDA {torch.version.cuda}, "
                             "or install a torch built for an older CUDA")
        return CudaCheck(False, why=cause, fix="run on a machine with an NVIDIA GPU and its driver, or use device=cpu")
    name, capability = torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    sm = f"sm_{capability[0]}{capability[1]}"
    if not arch_supported(capability, torch.cuda.get_arch_list()):
        return CudaCheck(False, name, capability,
                         why=f"{name} ({sm}) is not among this torch {torch.__version__} build's architectures "
                             f"({' '.join(torch.cuda.get_arch_list())})",
                         fix="use a GPU of a listed architecture (on Kaggle: the T4 or L4), or a torch built for "
                             f"{sm}")
    try:
        (torch.ones(8, device="cuda:0") * 2).sum().item()
    except Exception as e:
        return CudaCheck(False, name, capability, why=f"{name} ({sm}) failed its first operation: "
                         f"{str(e).strip().splitlines()[0]}", fix="check the GPU and driver, or use device=cpu")
    return CudaCheck(True, name, capability)


def pick_device(want: str = "auto", log=print) -> str:
    """'cuda' when want is 'auto' and a GPU is usable, else 'cpu' (saying so in one line where a GPU is present
    but unusable); an explicit 'cpu' is kept, an explicit 'cuda[:N]' is kept when usable, else a one-line UserError
    naming the cause and the fix. 'cpu' never imports torch (numpy-only callers stay light)."""
    if want == "cpu":
        return "cpu"
    if want != "auto" and not str(want).startswith("cuda"):
        raise UserError(f"device {want!r}: use auto, cuda, cuda:N or cpu")
    check = cuda_check()
    if want == "auto":
        if check.usable:
            return "cuda"
        if check.name or nvidia_gpu_present():
            log(f"WARNING: a GPU is here but unusable: {check.why}; running on the CPU ({check.fix})")
        return "cpu"
    if check.usable:
        return str(want)
    raise UserError(f"device {want!r}: {check.why}; {check.fix}")


AMP_DTYPES = ("auto", "bfloat16", "float16")


def amp_dtype(device: str, want: str = "auto") -> "torch.dtype":
    """The autocast dtype on `device` for the amp_dtype key. auto: bfloat16 from sm_80 (A100, H100, L4, RTX 30/40:
    the range of float32, so no loss scaling), float16 before it (T4, V100, P100: no fast bfloat16)."""
    import torch

    if want not in AMP_DTYPES:
        raise UserError(f"amp_dtype={want!r}: use {' | '.join(AMP_DTYPES)}")
    fast_bf16 = device.startswith("cuda") and torch.cuda.get_device_capability(device)[0] >= 8
    if want == "bfloat16" and device.startswith("cuda") and not fast_bf16:
        name = torch.cuda.get_device_name(device)
        raise UserError(f"amp_dtype=bfloat16: {name} has no fast bfloat16 (needs sm_80 or newer); use amp_dtype=auto "
                        "or float16")
    if want != "auto":
        return getattr(torch, want)
    return torch.bfloat16 if fast_bf16 else torch.float16


def autocast(device: str, enabled: bool, dtype: str = "auto") -> "torch.autocast":
    """Mixed precision on CUDA in amp_dtype(device, dtype); a no-op elsewhere: bf16/fp16 on this kind of CPU is
    10-300x slower than fp32."""
    import torch

    on = enabled and device.startswith("cuda")
    return torch.autocast("cuda", dtype=amp_dtype(device, dtype) if on else torch.float16, enabled=on)


def needs_scaler(device: str, enabled: bool, dtype: str = "auto") -> bool:
    """Whether training under this autocast needs a GradScaler: float16 only (its small range underflows
    gradients); bfloat16 has float32's exponent."""
    import torch

    return enabled and device.startswith("cuda") and amp_dtype(device, dtype) is torch.float16


def set_determinism(on: bool) -> None:
    """deterministic=true: deterministic torch algorithms (warning where an op has none), a fixed cuBLAS workspace
    and no cuDNN autotuning, so a GPU run repeats bit for bit; false: cuDNN benchmarks its algorithms per shape and
    keeps the fastest (timm's default). Set both ways: a process may train several runs."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # else cuBLAS on CUDA >= 10.2 is not repeatable
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.benchmark = not on
    torch.backends.cudnn.deterministic = on
