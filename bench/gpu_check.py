"""The GPU check of issues 14 and 25 in one run (bench/gpu_check.sh runs it): one JSON object on stdout, progress on
stderr.

Pieces, cheapest first, each timed and each failing alone (its entry then holds "error"):
  resume             a tiny run (BatchNorm, dropout, AMP, deterministic=true) trained 2 epochs straight, and 1 epoch
                     then --resume for a 2nd: max abs difference of the weights (0 = exact), the GradScaler's scale
                     and whether last.pt held the GPU's RNG state
  kernel_embeddings  the kernel's embedding code (retrieval.embeddings.load_model + embed_with, what kernel/infer.py
                     calls) on the test images, on the device (AMP fp16 and fp32) against the CPU (fp32); tolerance
                     stated: min cosine >= 0.999 under AMP, >= 0.99999 in fp32
  rank               pipeline.retrieval.rank.rank on the device against a bare product of the same shapes (torch.mm,
                     cuBLAS on CUDA): seconds, ratio, and top-5 agreement with an fp32 reference
  mfu                FLOPs of one training forward (torch.utils.flop_counter, model + head) x 3 for forward and
                     backward, times img/s, against the GPU's dense fp16/bf16 tensor peak (PEAK_TFLOPS; one not in
                     it: an H200's, 989 TFLOP/s): for a training step on tensors already on the device, and for the
                     loops of train_speed
  train_speed        bench/train_speed.py --reference timm-train --device cuda --amp --quick: our AMP training against
                     timm's own train.py (its JSON; tolerated when it fails), with the MFU of each loop it timed
  embed_speed        bench/embed_speed.py --device cuda --amp: embed against a bare forward (its JSON)
Issue 25's pieces, run after mfu and before train_speed (each skipped with a note when too little of the budget is
left):
  precision          a training step (model + ArcFace head, SGD/AdamW as the config, on device tensors) of m1's and
                     m2's backbones (eca_nfnet_l2, efficientnet_b3) at 512 px, batch 16, in bf16, fp16 (GradScaler)
                     and fp32 autocast: img/s after 2 warm-up steps over 5, and MFU against the GPU's dense peak for
                     that dtype (PEAK_TFLOPS; fp32 against TF32 where cuDNN's convolutions use it)
  channels_last      pipeline.model.memory_format.measure per backbone (the same 512 px, batch 16, AMP auto dtype):
                     seconds per forward+backward each layout, and the faster one
  decode             bench/decode_speed.py --device cuda --amp --quick: decode=cpu (loader workers, cv2) against
                     decode=gpu (nvJPEG batches): loader img/s, embed img/s, pixel and embedding differences
  compile            m2's backbone, fwd+bwd img/s eager against nn.Module.compile (after its compiling warm-up, which
                     is timed too), in a subprocess bounded by the budget

The data is made here (make-data, 10 hotels); nothing needs the network (pretrained=false everywhere).
--cpu: every piece on the CPU, small (issue 25's with timm's test_efficientnet at 64 px): a smoke run of this script;
train_speed --quick alone took 390 s on the shared 2 cores here, so give it --budget 900; --only a,b: those pieces;
--quick: embed_speed's --quick on CUDA too (train_speed always runs --quick).
usage: bash bench/gpu_check.sh [--cpu] [--quick] [--only resume,rank] [--budget 420]"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
H200_PEAK_FLOPS = 989e12  # H200 SXM dense FP16/BF16 tensor-core peak (NVIDIA's datasheet; sparsity doubles it)
# Dense peaks in TFLOP/s (no 2:4 sparsity: the datasheets' headline figures are twice these) by dtype, from NVIDIA's
# product datasheets: H100 and H200 (SXM, PCIe, NVL columns), A100 (40/80 GB, SXM and PCIe alike), L4, T4 (no bf16,
# no TF32: its 65 is fp16 with fp32 accumulate). fp32: CUDA cores; tf32: tensor cores, what cuDNN's convolutions use
# for fp32 tensors from sm_80 by default (torch.backends.cudnn.allow_tf32).
PEAK_TFLOPS = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}
M1_M2 = ("eca_nfnet_l2", "efficientnet_b3")  # pipeline/configs/m1.yaml, m2.yaml
STEP_SIZE, STEP_BATCH, WARMUP_STEPS, TIMED_STEPS = 512, 16, 2, 5
AMP_MIN_COSINE, FP32_MIN_COSINE = 0.999, 0.99999
# what the pipeline imports beyond torch; the lent GPU machine's python3 lacks the first ones (wheels: .whl/)
NEEDS = ("albumentations", "albucore", "pydantic", "simsimd", "stringzilla", "pytorch_metric_learning", "timm",
         "cv2", "pandas", "yaml")


class Check:
    """What the pieces share: the device, the deadline, the work folder, the tiny data and the subprocess runner."""

    def __init__(self, args, work):
        import torch

        self.cpu, self.quick, self.work, self.deadline = args.cpu, args.quick, work, time.time() + args.budget
        self.device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        self.data = self.folds = None
        size = "32" if args.cpu else "64"
        self.tiny = ["backbone=test_efficientnet" if args.cpu else "backbone=tf_efficientnet_lite0",
                     "pretrained=false", f"image_size={size}", "embedding_dim=64", "batch_size=16",
                     "eval_batch_size=64", "num_workers=2", "lr=0.01", "nonfinite_loss=skip"]

    def left(self):
        return self.deadline - time.time()

    def sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def run(self, *argv, timeout=None):
        """python argv in the repo root; stdout on success, else a RuntimeError with the output's tail."""
        limit = max(1.0, min(timeout or 1e9, self.left()))
        try:
            p = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=self.env, capture_output=True,
                               text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(map(str, argv[:3]))}: stopped after {limit:.0f} s (time budget)") from None
        if p.returncode:
            raise RuntimeError(f"{' '.join(map(str, argv[:3]))} exited {p.returncode}: {(p.stderr or p.stdout)[-600:]}")
        return p.stdout

    def pipeline(self, *argv, timeout=None):
        # ./run.sh would build .venv from requirements.txt first, which an offline GPU machine cannot: same command
        return self.run("-m", "pipeline", *argv, timeout=timeout)

    def tiny_data(self):
        if self.data is None:
            self.data, self.folds = self.work / "data", self.work / "folds.csv"
            self.pipeline("make-data", "--out", self.data, "--hotels", 10, "--seed", 3, timeout=120)
            self.pipeline("folds", "--data", self.data, "--n-folds", 5, "--seed", 1, "--out", self.folds)
        return [f"data={self.data}", f"folds_file={self.folds}", *self.tiny]

    def train(self, name, *extra):
        (self.work / "gc.yaml").write_text("# gpu check\n")
        self.pipeline("train", self.work / "gc.yaml", *self.tiny_data(), f"runs_dir={self.work / name}", *extra,
                      timeout=180)
        return self.work / name / "gc" / "fold0"


def best_seconds(check, fn, repeat=3, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        check.sync()
        t = time.perf_counter()
        fn()
        check.sync()
        times.append(time.perf_counter() - t)
    return min(times)


def piece_resume(check):
    import torch

    fixed = ["scheduler=constant", "deterministic=true", "amp=true"]  # constant lr: the resume changes `epochs`
    straight = check.train("straight", *fixed, "epochs=2")
    check.train("resumed", *fixed, "epochs=1")
    resumed = check.train("resumed", *fixed, "epochs=2", "--resume")
    a, b = (torch.load(r / "last.pt", weights_only=True) for r in (straight, resumed))
    diff = max((a[p][k].double() - b[p][k].double()).abs().max().item()
               for p in ("model", "head") for k in a[p] if a[p][k].numel())
    return {"method": "2 epochs straight vs 1 epoch, then --resume for the 2nd (scheduler=constant)",
            "deterministic": True, "amp": check.device == "cuda", "steps": a["progress"]["step"],
            "max_abs_weight_diff": diff, "exact": diff == 0.0, "grad_scaler": a.get("scaler") or "disabled (CPU)",
            "gpu_rng_state_saved": "cuda" in a["rng"][0], "skipped_batches": a["progress"].get("skipped", 0)}


def _embed(ck, items, device, amp):
    from pipeline.retrieval.embeddings import Variant, embed_with, load_model

    cfg = {**ck["config"], "amp": amp}
    model = load_model(ck["config"], ck["model"], cfg, device, ck["image_size"])
    tfm, _ = Variant().transform("test", cfg, ck)
    return embed_with(model, items, tfm, 0, cfg, device).astype("float64")


def piece_kernel_embeddings(check):
    import numpy as np
    import torch

    from pipeline.data.layouts import load_dataset

    run = check.work / "straight" / "gc" / "fold0"
    if not (run / "best.pt").is_file():
        run = check.train("straight", "epochs=1")
    ck = torch.load(run / "best.pt", weights_only=True)
    ds = load_dataset(check.data)
    by_id = {it.image_id: it for it in ds.test}
    items = [by_id[i] for i in ds.test_ids]  # the kernel's order
    cpu = _embed(ck, items, "cpu", False)
    out = {"images": len(items), "dim": cpu.shape[1], "device": check.device}
    for name, amp, need in (("amp_fp16", True, AMP_MIN_COSINE), ("fp32", False, FP32_MIN_COSINE)):
        dev = _embed(ck, items, check.device, amp)
        cos = (dev * cpu).sum(1) / np.linalg.norm(dev, axis=1) / np.linalg.norm(cpu, axis=1)
        out[name] = {"max_abs_diff": float(np.abs(dev - cpu).max()), "min_cosine": float(cos.min()),
                     "tolerance_min_cosine": need, "ok": bool(cos.min() >= need)}
    return out


def piece_rank(check):
    import numpy as np
    import torch

    from pipeline.retrieval.rank import rank

    gpu = check.device == "cuda"
    Q, N, D, M, C = (5000, 44703, 4096, 6, 3116) if gpu else (400, 3000, 128, 2, 300)  # gpu: the paper's scale
    gen = torch.Generator(check.device).manual_seed(0)

    def rows(n):  # unit rows made on the device: numpy would take minutes for 6 x 44,703 x 4,096
        x = torch.randn(n, D, device=check.device, generator=gen)
        return torch.nn.functional.normalize(x, dim=1).half().cpu().numpy()

    qs, gs = [rows(Q) for _ in range(M)], [rows(N) for _ in range(M)]
    labels = np.random.default_rng(0).integers(0, C, N)
    budget = 2 << 30  # the config's max_memory default
    out = {}
    rank_s = best_seconds(check, lambda: out.update(r=rank(qs, gs, labels, k=5, max_memory=budget,
                                                           device=check.device, log=lambda *a: None)))
    q_host, g_host = np.concatenate(qs, 1), np.concatenate(gs, 1)  # equal weights: one long dot product
    dtype = torch.float16 if gpu else torch.float32  # fp16 on the CPU is slow: it is not what rank does there
    qt, gt = (torch.from_numpy(x).to(check.device, dtype) for x in (q_host, g_host))

    def mm():
        if not gpu:
            return torch.mm(qt, gt.T)
        try:
            return torch.mm(qt, gt.T, out_dtype=torch.float32)
        except TypeError:  # a torch without mm's out_dtype: fp16 out, as rank then does
            return torch.mm(qt, gt.T).float()

    mm_s = best_seconds(check, mm)
    upload_s = best_seconds(check, lambda: [torch.from_numpy(x).to(check.device) for x in (q_host, g_host)])
    S = torch.mm(qt[:256].float(), gt.float().T)  # the fp32 reference of 256 queries: per-class max, top 5
    cls = torch.from_numpy(labels).to(check.device).expand(len(S), -1)
    ref = torch.full((len(S), C), -torch.inf, device=check.device).scatter_reduce_(1, cls, S, "amax")
    ref_top = ref.topk(5, dim=1).indices.cpu().numpy()
    return {"queries": Q, "gallery": N, "dim": D, "models": M, "classes": C, "max_memory": budget,
            "bare": "torch.mm fp16 in, fp32 out (cuBLAS)" if gpu else "torch.mm fp32",
            "rank_seconds": round(rank_s, 4), "bare_mm_seconds": round(mm_s, 4),
            "upload_seconds": round(upload_s, 4), "ratio_bare_over_rank": round(mm_s / rank_s, 3),
            "ratio_bare_with_upload_over_rank": round((mm_s + upload_s) / rank_s, 3),
            "top5_same_as_fp32_reference": float((out["r"][0][:256] == ref_top).all(1).mean())}


def _step_setup(check, backbone, size, batch, classes=250):
    import torch

    from pipeline.config import load_config
    from pipeline.model import heads
    from pipeline.model.embedder import build_model
    from pipeline.training.optimizers import make_optimizer

    cfg = load_config("default", [f"backbone={backbone}", "pretrained=false", f"image_size={size}",
                                  f"batch_size={batch}"])
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    head = heads.build_head(cfg, classes, [10] * classes)
    model.to(check.device, memory_format=torch.channels_last), head.to(check.device)
    step = heads.LossStep(model, head)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=check.device)
    x = x.contiguous(memory_format=torch.channels_last)  # uint8 as the loader now delivers; the model normalises
    y = torch.randint(0, classes, (batch,), device=check.device)
    return cfg, step, make_optimizer(cfg, model, head), x, y


def piece_mfu(check, backbone="tf_efficientnet_lite0", size=96, batch=32):  # train_speed.py's defaults
    """Training FLOPs per image and the utilisation of a training step on device-resident tensors (the loop's AMP:
    fp16 autocast with a GradScaler); train_speed's figures are added once it has run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.core.device import autocast

    batch = batch if check.device == "cuda" else 8  # FLOPs per image do not depend on it
    cfg, step, opt, x, y = _step_setup(check, backbone, size, batch)
    scaler = torch.amp.GradScaler("cuda", enabled=check.device == "cuda")
    # x 3 for forward + backward, not the counter's own backward count: its convolution backward ignores groups
    # (a depthwise 3x3 conv over 64 channels counts 64x its FLOPs), which EfficientNets are full of
    with FlopCounterMode(display=False) as fc, autocast(check.device, True):
        step(x, y)
    forward = fc.get_total_flops() / batch

    def train_step():
        with autocast(check.device, True):
            loss = step(x, y)
        scaler.scale(loss).backward()
        scaler.step(opt), scaler.update()
        opt.zero_grad(set_to_none=True)

    steps, repeat = (30, 2) if check.device == "cuda" else (1, 1)
    seconds = best_seconds(check, lambda: [train_step() for _ in range(steps)], repeat=repeat)
    img_s = steps * batch / seconds
    return {"backbone": backbone, "image_size": size, "batch_size": batch, "embedding_dim": cfg["embedding_dim"],
            "forward_flops_per_image": forward, "counted_with": "torch.utils.flop_counter.FlopCounterMode",
            "training_flops_per_image": 3 * forward, "peak_flops": _peak(check),
            "device_tensors_img_s": round(img_s, 1), "device_tensors_mfu": _mfu(check, 3 * forward, img_s)}


def _peak(check):
    """The GPU's dense bf16/fp16 peak in FLOP/s (PEAK_TFLOPS; one not in it: the H200's); None on the CPU."""
    if check.device != "cuda":
        return None
    import torch

    return gpu_peaks(torch.cuda.get_device_name())[1].get("fp16", H200_PEAK_FLOPS / 1e12) * 1e12


def _mfu(check, flops_per_image, img_s):
    return round(flops_per_image * img_s / _peak(check), 5) if check.device == "cuda" else None


def gpu_peaks(name: str) -> tuple[str | None, dict]:
    """(PEAK_TFLOPS key, its peaks) of a torch.cuda.get_device_name() ('NVIDIA H100 80GB HBM3', 'NVIDIA H100 PCIe',
    'NVIDIA A100-SXM4-80GB', 'Tesla T4', ...), or (None, {}) for a GPU not in the table."""
    words = set(name.upper().replace("-", " ").split())
    for chip in ("H100", "H200", "A100", "L4", "T4"):
        if chip in words:
            key = chip
            if chip in ("H100", "H200"):
                key += " PCIe" if "PCIE" in words else " NVL" if "NVL" in words else " SXM"
            key = key if key in PEAK_TFLOPS else chip
            return (key, PEAK_TFLOPS[key]) if key in PEAK_TFLOPS else (None, {})
    return None, {}


def _bench_json(check, script, timeout, extra=()):
    if not (ROOT / "bench" / script).is_file():
        raise RuntimeError(f"bench/{script} not found")
    extra = [*extra, *(["--device", "cpu", "--quick"] if check.device == "cpu" else ["--device", "cuda", "--amp"])]
    extra += ["--quick"] if check.quick and check.device == "cuda" and "--quick" not in extra else []
    out = check.run(ROOT / "bench" / script, *extra, timeout=timeout)
    return json.loads(out[out.index("{"):])


EMBED_SPEED_RESERVE = 120  # seconds train_speed leaves for embed_speed, the last piece


def piece_embed_speed(check):
    return _bench_json(check, "embed_speed.py", timeout=check.left())


def piece_train_speed(check, mfu=None):
    # issue 25: timm's own train.py as the reference, --quick (30 hotels per dataset, one repeat) to fit the budget
    result = _bench_json(check, "train_speed.py", timeout=check.left() - EMBED_SPEED_RESERVE,
                         extra=["--reference", "timm-train", "--quick"])
    if mfu and "training_flops_per_image" in mfu:  # the utilisation each measured loop reached
        result["mfu"] = {f"{part}.{k}": _mfu(check, mfu["training_flops_per_image"], v)
                         for part in ("demo", "photos_1024") for k, v in result.get(part, {}).items()
                         if k.endswith("_img_s")}
    return result


# --- issue 25: precisions, memory format, GPU decoding and compile at the paper's 512 px -------------------------
def _skip(check, needs):
    """A note instead of a piece when less than `needs` seconds of the budget are left (None: go ahead)."""
    left = check.left()
    return {"skipped": f"time budget: {left:.0f} s left, this piece needs about {needs} s"} if left < needs else None


def _free(check):
    import gc

    gc.collect()
    if check.device == "cuda":
        import torch

        torch.cuda.empty_cache()


class _Benchmarking:
    """cuDNN autotuning on inside (training's deterministic=false, its default), as it was after."""

    def __enter__(self):
        import torch

        self.was = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True

    def __exit__(self, *exc):
        import torch

        torch.backends.cudnn.benchmark = self.was


def _step_settings(check):
    """(backbones, size, batch, timed steps): m1's and m2's at 512 px on CUDA; timm's test model, small, on the CPU."""
    if check.device == "cuda":
        return M1_M2, STEP_SIZE, STEP_BATCH, TIMED_STEPS
    return ("test_efficientnet",), 64, 2, 1


def _timed_steps(check, step, opt, x, y, enabled, dtype, timed):
    """(img/s of `timed` training steps after WARMUP_STEPS, seconds of the first step) under autocast(dtype)."""
    import torch

    from pipeline.core.device import autocast, needs_scaler

    scaler = torch.amp.GradScaler("cuda", enabled=needs_scaler(check.device, enabled, dtype))

    def train_step():
        with autocast(check.device, enabled, dtype):
            loss = step(x, y)
        scaler.scale(loss).backward()
        scaler.step(opt), scaler.update()
        opt.zero_grad(set_to_none=True)

    first = time.perf_counter()
    train_step()
    check.sync()
    first = time.perf_counter() - first
    for _ in range(WARMUP_STEPS - 1):
        train_step()
    check.sync()
    t = time.perf_counter()
    for _ in range(timed):
        train_step()
    check.sync()
    return timed * len(x) / (time.perf_counter() - t), first


PRECISIONS = (("bf16", True, "bfloat16"), ("fp16", True, "float16"), ("fp32", False, "auto"))


def _precision_rows(check, backbone, size, batch, timed, peaks):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.core.device import autocast
    from pipeline.core.errors import UserError

    cfg, step, opt, x, y = _step_setup(check, backbone, size, batch)
    with FlopCounterMode(display=False) as fc, autocast(check.device, True):
        step(x, y)  # the FLOPs of a forward do not depend on the dtype; x 3 for forward + backward (piece_mfu)
    training = 3 * fc.get_total_flops() / batch
    tf32 = check.device == "cuda" and torch.cuda.get_device_capability()[0] >= 8 and torch.backends.cudnn.allow_tf32
    out = {"training_flops_per_image": training, "optimizer": cfg["optimizer"]}
    for name, enabled, dtype in PRECISIONS:
        if check.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            img_s, first = _timed_steps(check, step, opt, x, y, enabled, dtype, timed)
        except UserError as e:  # bf16 on a GPU without it (T4)
            out[name] = {"skipped": str(e)}
            continue
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            _free(check)
            out[name] = {"error": f"out of GPU memory at batch {batch}"}
            continue
        peak = ("tf32" if tf32 else "fp32") if name == "fp32" else name
        row = {"img_s": round(img_s, 1), "step_ms": round(1000 * batch / img_s, 1), "first_step_s": round(first, 2)}
        if peak in peaks:
            row["peak"] = peak
            row.update(peak_tflops=peaks[peak], mfu=round(training * img_s / (peaks[peak] * 1e12), 4))
        if check.device == "cuda":
            row["max_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        out[name] = row
    return out


def piece_precision(check):
    """Training-step img/s and MFU of m1's and m2's backbones in bf16, fp16 and fp32 autocast (module docstring)."""
    import torch

    backbones, size, batch, timed = _step_settings(check)
    gpu = check.device == "cuda"
    key, peaks = gpu_peaks(torch.cuda.get_device_name()) if gpu else (None, {})
    out = {"image_size": size, "batch_size": batch, "warmup_steps": WARMUP_STEPS, "timed_steps": timed,
           "gpu_peaks": key, "peaks_tflops": peaks or None, "input": "uint8 channels_last on the device",
           "flops_counted_with": "torch.utils.flop_counter.FlopCounterMode, forward x 3"}
    if not gpu:
        out["note"] = ("CPU smoke run: autocast is a no-op here (pipeline.core.device.autocast), so every row is "
                       "fp32, and there is no MFU")
    elif key is None:
        out["note"] = f"{torch.cuda.get_device_name()} is not in PEAK_TFLOPS: no MFU"
    with _Benchmarking():
        for backbone in backbones:
            skip = _skip(check, 45) if gpu else None
            try:
                out[backbone] = skip or _precision_rows(check, backbone, size, batch, timed, peaks)
            except Exception as e:  # one backbone's failure keeps the other's figures
                out[backbone] = {"error": f"{type(e).__name__}: {e}"}
            _free(check)
    return out


def piece_channels_last(check):
    """memory_format.measure per backbone: forward+backward seconds in each layout, AMP (auto dtype) on CUDA."""
    from pipeline.config import load_config
    from pipeline.model.embedder import build_model
    from pipeline.model.memory_format import measure

    backbones, size, batch, _ = _step_settings(check)
    gpu = check.device == "cuda"
    out = {"image_size": size, "batch_size": batch, "amp": gpu, "amp_dtype": "auto",
           "method": "pipeline.model.memory_format.measure (median of 3 after 1 warm-up, each layout)"}
    with _Benchmarking():
        for backbone in backbones:
            skip = _skip(check, 30) if gpu else None
            if skip:
                out[backbone] = skip
                continue
            try:
                cfg = load_config("default", [f"backbone={backbone}", "pretrained=false", f"image_size={size}"])
                model, _ = build_model(cfg, with_weights=False)
                sec = measure(model.to(check.device), size, batch, check.device, gpu, "auto")
                out[backbone] = {**{f"{k}_s": round(v, 4) for k, v in sec.items()},
                                 **{f"{k}_img_s": round(batch / v, 1) for k, v in sec.items()},
                                 "faster": min(sec, key=sec.get)}
                del model
            except Exception as e:
                out[backbone] = {"error": f"{type(e).__name__}: {e}"}
            _free(check)
    return out


def piece_decode(check):
    """bench/decode_speed.py: decode=cpu against decode=gpu (its JSON)."""
    if check.device == "cuda":
        skip = _skip(check, 60)
        if skip:
            return skip
        extra = ["--device", "cuda", "--amp", "--quick", "--size", "224"]
    else:
        extra = ["--device", "cpu", "--quick", "--hotels", "10", "--photo-hotels", "0", "--size", "64",
                 "--backbone", "test_efficientnet"]
    out = check.run(ROOT / "bench" / "decode_speed.py", *extra, timeout=min(check.left(), 150))
    return json.loads(out[out.index("{"):])


COMPILE_BACKBONE = M1_M2[1]  # m2's: its compile is the shorter of the two


def piece_compile(check):
    """Eager against nn.Module.compile for one backbone, in a subprocess (a compile cannot be cut short in-process)."""
    gpu = check.device == "cuda"
    if gpu:
        skip = _skip(check, 150)
        if skip:
            return skip
    backbones, size, batch, timed = _step_settings(check)
    spec = {"backbone": COMPILE_BACKBONE if gpu else backbones[0], "size": size, "batch": batch,
            "timed": timed if gpu else 2, "device": check.device}
    out = check.run(Path(__file__), "--compile-child", json.dumps(spec), timeout=min(check.left(), 240))
    return {**spec, **json.loads(out[out.index("{"):])}


def compile_child(spec: dict) -> dict:
    """The compile piece's measurement (run in its own process): a training step's img/s eager, then compiled."""
    import types

    import torch

    check = types.SimpleNamespace(device=spec["device"])
    check.sync = (lambda: torch.cuda.synchronize()) if spec["device"] == "cuda" else (lambda: None)
    out = {"amp": spec["device"] == "cuda", "amp_dtype": "auto"}
    with _Benchmarking():
        for mode in ("eager", "compiled"):
            torch.manual_seed(0)
            _, step, opt, x, y = _step_setup(check, spec["backbone"], spec["size"], spec["batch"])
            if mode == "compiled":
                step.model.compile()  # in place, as training's compile=true (pipeline/training/loop.py)
            img_s, first = _timed_steps(check, step, opt, x, y, out["amp"], "auto", spec["timed"])
            out[mode] = {"img_s": round(img_s, 1), "first_step_s": round(first, 2)}
            del step, opt, x, y
            _free(check)
    out["speedup"] = round(out["compiled"]["img_s"] / out["eager"]["img_s"], 3)
    return out


PIECES = ["resume", "kernel_embeddings", "rank", "mfu", "precision", "channels_last", "decode", "compile",
          "train_speed", "embed_speed"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="every piece on the CPU, small: a smoke run")
    p.add_argument("--only", default=",".join(PIECES), help=f"comma-separated pieces (default all: {PIECES})")
    p.add_argument("--quick", action="store_true", help="train_speed and embed_speed with --quick (30 hotels)")
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole check (default 420)")
    p.add_argument("--compile-child", help=argparse.SUPPRESS)  # the compile piece's own process
    args = p.parse_args(argv)
    if args.compile_child:
        print(json.dumps(compile_child(json.loads(args.compile_child))))
        return
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # here and in every subprocess
    import torch

    t0, result = time.time(), {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        check = Check(args, Path(tmp))
        result.update(device=check.device, torch=torch.__version__, cuda=torch.version.cuda,
                      gpu=torch.cuda.get_device_name() if check.device == "cuda" else None,
                      missing_modules=[m for m in NEEDS if importlib.util.find_spec(m) is None], pieces={})
        for name in [n for n in PIECES if n in args.only.split(",")]:
            print(f"gpu_check: {name} ({check.left():.0f} s left)", file=sys.stderr, flush=True)
            t = time.time()
            try:
                fn = globals()[f"piece_{name}"]
                got = fn(check, result["pieces"].get("mfu")) if name == "train_speed" else fn(check)
            except Exception as e:  # one piece's failure must not cost the others' figures
                got = {"error": f"{type(e).__name__}: {e}"}
            got["seconds"] = round(time.time() - t, 1)
            result["pieces"][name] = got
            if check.device == "cuda":
                torch.cuda.empty_cache()  # the next piece may be a subprocess on the same GPU
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
