"""The GPU check of issue 14 in one run (bench/gpu_check.sh runs it): one JSON object on stdout, progress on stderr.

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
                     backward, times img/s, against the dense fp16/bf16 tensor peak of an H200 (989 TFLOP/s): for a
                     training step on tensors already on the device, and for the loops of train_speed
  train_speed        bench/train_speed.py --device cuda --amp: our AMP training against timm's reference loop (its
                     JSON), with the MFU of each loop it timed
  embed_speed        bench/embed_speed.py --device cuda --amp: embed against a bare forward (its JSON)

The data is made here (make-data, 10 hotels); nothing needs the network (pretrained=false everywhere).
--cpu: every piece on the CPU, small (a smoke run of this script; train_speed --quick alone took 390 s on the shared
2 cores here, so give it --budget 900); --only a,b: those pieces; --quick: the two benches' --quick on CUDA too.
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
    model = load_model(ck["config"], ck["model"], cfg, device)
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
            "training_flops_per_image": 3 * forward, "peak_flops": H200_PEAK_FLOPS if check.device == "cuda" else None,
            "device_tensors_img_s": round(img_s, 1), "device_tensors_mfu": _mfu(check, 3 * forward, img_s)}


def _mfu(check, flops_per_image, img_s):
    return round(flops_per_image * img_s / H200_PEAK_FLOPS, 5) if check.device == "cuda" else None


def _bench_json(check, script, timeout):
    if not (ROOT / "bench" / script).is_file():
        raise RuntimeError(f"bench/{script} not found")
    extra = ["--device", "cpu", "--quick"] if check.device == "cpu" else ["--device", "cuda", "--amp"]
    extra += ["--quick"] if check.quick and check.device == "cuda" else []
    out = check.run(ROOT / "bench" / script, *extra, timeout=timeout)
    return json.loads(out[out.index("{"):])


EMBED_SPEED_RESERVE = 120  # seconds train_speed leaves for embed_speed, the last piece


def piece_embed_speed(check):
    return _bench_json(check, "embed_speed.py", timeout=check.left())


def piece_train_speed(check, mfu=None):
    result = _bench_json(check, "train_speed.py", timeout=check.left() - EMBED_SPEED_RESERVE)
    if mfu and "training_flops_per_image" in mfu:  # the utilisation each measured loop reached
        result["mfu"] = {f"{part}.{k}": _mfu(check, mfu["training_flops_per_image"], v)
                         for part in ("demo", "photos_1024") for k, v in result.get(part, {}).items()
                         if k.endswith("_img_s")}
    return result


PIECES = ["resume", "kernel_embeddings", "rank", "mfu", "train_speed", "embed_speed"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="every piece on the CPU, small: a smoke run")
    p.add_argument("--only", default=",".join(PIECES), help=f"comma-separated pieces (default all: {PIECES})")
    p.add_argument("--quick", action="store_true", help="train_speed and embed_speed with --quick (30 hotels)")
    p.add_argument("--budget", type=float, default=420, help="seconds for the whole check (default 420)")
    args = p.parse_args(argv)
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
