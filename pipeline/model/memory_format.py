"""channels_last or not: the config's choice, or (channels_last: auto) the faster one for this backbone.

Why not always channels_last: timm's own training benchmark (results/benchmark-train-amp-{nchw,nhwc}-pt112-cu113-
rtx3090.csv, RTX 3090, AMP, PyTorch 1.12) has efficientnet_b3 faster in channels_last (457 -> 572 img/s) but
eca_nfnet_l2 (142 -> 59) and regnety_120 (307 -> 92) far slower; newer cuDNN may differ, so on a GPU `auto` measures
it: a few forward+backward passes of a batch each way, once per backbone, size, batch, GPU, precision and torch
version, kept in ~/.cache/pipeline/memory_format.json. On the CPU `auto` is channels_last for conv nets (oneDNN's
preferred layout; bench/train_speed.py's figures) without measuring."""
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    import torch

_DECIDED: dict[str, bool] = {}  # this process's decisions: embedding asks once per batch


def cache_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeline" / "memory_format.json"


def is_conv_net(model: "torch.nn.Module") -> bool:
    """More than one Conv2d: a ViT's patch embedding alone does not make the layout matter."""
    import torch

    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def check(value: object) -> None:
    if value not in ("auto", True, False):
        raise UserError(f"channels_last={value!r}: use auto, true or false")


def measure(model: "torch.nn.Module", size: int, batch: int, device: str, amp: bool, amp_dtype: str = "auto",
            steps: int = 3) -> dict[str, float]:
    """{'channels_last': s, 'contiguous': s}: the median seconds of a forward+backward of a random (batch, 3, size,
    size) batch in each layout, after one warm-up pass each (cuDNN picks its kernels). The model's weights, layout,
    mode and the random streams are left as they were; its gradients are cleared."""
    import torch

    from pipeline.core.device import autocast

    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}  # BatchNorm running stats move
    was_training = model.training
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    layout = (torch.channels_last if conv is not None and conv.is_contiguous(memory_format=torch.channels_last)
              and not conv.is_contiguous() else torch.contiguous_format)
    # dropout draws from the global streams: a run must not depend on whether this decision was cached
    rng = torch.random.get_rng_state(), (torch.cuda.get_rng_state(device) if device.startswith("cuda") else None)
    model.train()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator(device).manual_seed(0), device=device)
    out = {}
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model.to(memory_format=fmt)
        xf = x.contiguous(memory_format=fmt)
        times = []
        for _ in range(steps + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            with autocast(device, amp, amp_dtype):
                y = model(xf)
            y.float().square().mean().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        out[name] = sorted(times[1:])[len(times[1:]) // 2]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    model.to(memory_format=layout)
    model.train(was_training)
    torch.random.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1], device)
    return out


def _key(cfg: dict, size: int, batch: int, device: str) -> str:
    import torch

    from pipeline.core.device import amp_dtype

    dtype = str(amp_dtype(device, cfg["amp_dtype"])).split(".")[1] if cfg["amp"] else "float32"
    gpu = torch.cuda.get_device_name(device)
    return f"{cfg['backbone']}|{size}px|batch {batch}|{gpu}|{dtype}|torch {torch.__version__}"


def layout(cfg: dict, model: "torch.nn.Module", device: str, size: int) -> "torch.memory_format":
    """The memory format embedding feeds this model at this size (use_channels_last's decision, made once)."""
    import torch

    return torch.channels_last if use_channels_last(cfg, model, device, size) else torch.contiguous_format


def use_channels_last(cfg: dict, model: "torch.nn.Module", device: str, size: int, batch: int = 0,
                      log=print) -> bool:
    """The channels_last key resolved for this model on this device. batch: the training batch to measure with
    (0: use a decision already made for this backbone and size, else measure at eval_batch_size / 4)."""
    value = cfg["channels_last"]
    check(value)
    if value != "auto":
        return value
    memo, on_gpu = f"{cfg['backbone']}|{size}|{device}", device.startswith("cuda")
    if memo in _DECIDED and not (batch and on_gpu):
        return _DECIDED[memo]
    if not on_gpu or not is_conv_net(model):  # the CPU: channels_last for conv nets; a ViT: no matter
        _DECIDED[memo] = not on_gpu and is_conv_net(model)
        return _DECIDED[memo]
    batch = batch or max(1, cfg["eval_batch_size"] // 4)
    key, path = _key(cfg, size, batch, device), cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        seconds = measure(model, size, batch, device, cfg["amp"], cfg["amp_dtype"])
        known[key] = {"channels_last_s": round(seconds["channels_last"], 5),
                      "contiguous_s": round(seconds["contiguous"], 5),
                      "use": seconds["channels_last"] < seconds["contiguous"]}
        try:
            from pipeline.core.io import write_text

            write_text(path, json.dumps(known, indent=1))
        except OSError:
            pass  # a read-only home: measured again next time
        k = known[key]
        log(f"channels_last=auto: {cfg['backbone']} at {size}px, batch {batch}: channels_last "
            f"{k['channels_last_s']:.4f} s, contiguous {k['contiguous_s']:.4f} s per step -> "
            f"{'channels_last' if k['use'] else 'contiguous'} (kept in {path})")
    _DECIDED[memo] = known[key]["use"]
    return _DECIDED[memo]
