"""Training at the GPU's rate, each option on the CPU: amp_dtype (bfloat16 where the card has it, a GradScaler only
for float16), deterministic (off by default, on for a bit-exact resume), channels_last auto (measured once per
backbone on a GPU, cached), compile (inductor), grad_checkpointing (timm's: the same gradients), clip_grad with
clip_mode norm | value | agc (timm's helpers), image_size_schedule (progressive resizing, resume-safe), layer_decay
(timm's groups) and val_gallery auto."""
import json
import re

import pytest
import timm
import torch

from pipeline.config import load_config
from pipeline.core import device
from pipeline.core.errors import UserError
from pipeline.model import memory_format
from pipeline.training import optimizers, validation

from conftest import tiny_overrides


def _cfg(tiny_data, runs, *extra):
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "t.yaml").write_text("# training options\n")
    return load_config(str(runs / "t.yaml"), tiny_overrides(tiny_data, runs, *extra))


def _train(cfg, resume=False):
    from pipeline.training.loop import train

    lines = []
    return train(cfg, resume=resume, log=lines.append), lines


def _weights(run, kind="last"):
    return torch.load(run / f"{kind}.pt", weights_only=True)


# --- mixed precision ---

@pytest.mark.parametrize("capability, want, dtype, scaler", [((7, 5), "auto", torch.float16, True),
                                                            ((8, 0), "auto", torch.bfloat16, False),
                                                            ((9, 0), "float16", torch.float16, True),
                                                            ((8, 9), "bfloat16", torch.bfloat16, False)])
def test_amp_dtype_by_card_and_a_scaler_only_for_float16(monkeypatch, capability, want, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert device.amp_dtype("cuda", want) is dtype
    assert device.needs_scaler("cuda", True, want) is scaler
    assert not device.needs_scaler("cuda", False, want) and not device.needs_scaler("cpu", True, want)


def test_bfloat16_on_a_card_without_it_and_a_bad_dtype_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(UserError, match="amp_dtype=bfloat16: Tesla T4 has no fast bfloat16"):
        device.amp_dtype("cuda", "bfloat16")
    with pytest.raises(UserError, match=re.escape("amp_dtype='fp8': use auto | bfloat16 | float16")):
        device.amp_dtype("cpu", "fp8")


# --- determinism ---

def test_deterministic_is_off_by_default_and_sets_torch_both_ways():
    assert load_config("default")["deterministic"] is False
    device.set_determinism(True)
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    device.set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


# --- channels_last ---

def test_channels_last_auto_on_the_cpu_is_on_for_conv_nets_only():
    cfg = load_config("default", ["backbone=test_efficientnet"])
    assert memory_format.use_channels_last(cfg, timm.create_model("test_efficientnet"), "cpu", 32) is True
    vit = {**cfg, "backbone": "test_vit"}
    assert memory_format.use_channels_last(vit, timm.create_model("test_vit"), "cpu", 32) is False
    for value in (True, False):
        assert memory_format.use_channels_last({**cfg, "channels_last": value}, None, "cuda", 32) is value
    with pytest.raises(UserError, match="channels_last='yes': use auto, true or false"):
        memory_format.use_channels_last({**cfg, "channels_last": "yes"}, None, "cpu", 32)


def test_measuring_leaves_the_weights_and_random_streams_as_they_were():
    model = timm.create_model("test_efficientnet", drop_rate=0.5)
    before, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.random.get_rng_state()
    seconds = memory_format.measure(model, 32, 4, "cpu", amp=False, steps=2)
    assert set(seconds) == {"channels_last", "contiguous"} and all(s > 0 for s in seconds.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm stats restored
    assert torch.equal(torch.random.get_rng_state(), rng) and all(p.grad is None for p in model.parameters())


def test_a_gpu_measures_once_per_backbone_and_keeps_the_choice(monkeypatch, tmp_path):
    """The GPU path with the measurement and the card's name stood in (no GPU here): the faster layout is chosen,
    written to the cache file, and read from it by a fresh process (the in-process memo cleared)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(memory_format, "_DECIDED", {})
    calls = []
    monkeypatch.setattr(memory_format, "measure", lambda *a, **kw: calls.append(a) or
                        {"channels_last": 0.3, "contiguous": 0.1})
    monkeypatch.setattr(memory_format, "_key", lambda cfg, size, batch, dev: f"{cfg['backbone']}|{size}|{batch}|GPU")
    cfg, lines = load_config("default", ["backbone=test_efficientnet"]), []
    model = timm.create_model("test_efficientnet")
    assert memory_format.use_channels_last(cfg, model, "cuda", 64, 8, lines.append) is False
    assert len(calls) == 1 and "-> contiguous" in lines[0]
    assert json.loads(memory_format.cache_file().read_text())["test_efficientnet|64|8|GPU"]["use"] is False
    monkeypatch.setattr(memory_format, "_DECIDED", {})
    assert memory_format.use_channels_last(cfg, model, "cuda", 64, 8, lines.append) is False and len(calls) == 1
    assert memory_format.use_channels_last(cfg, model, "cuda", 64) is False  # embedding: the decision made


# --- gradient clipping ---

def _with_grads(seed=0):
    torch.manual_seed(seed)
    model, head = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 4)), torch.nn.Linear(4, 3)
    head(model(torch.randn(7, 6))).square().sum().mul(50).backward()
    return model, head


@pytest.mark.parametrize("mode", sorted(optimizers.CLIP_MODES))
def test_clipping_is_timms_with_the_head_left_out_of_agc(mode):
    from timm.utils import adaptive_clip_grad

    model, head = _with_grads()
    ref_model, ref_head = _with_grads()
    optimizers.clip_gradients({"clip_grad": 0.05, "clip_mode": mode}, model, head)
    params = list(ref_model.parameters()) + list(ref_head.parameters())
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(params, 0.05)
        assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()] +
                                                    [p.grad.norm() for p in head.parameters()])) <= 0.05 + 1e-6
    elif mode == "value":
        torch.nn.utils.clip_grad_value_(params, 0.05)
        assert max(p.grad.abs().max() for p in params) <= 0.05
    else:
        adaptive_clip_grad(list(ref_model.parameters()), 0.05)  # not the head's
        untouched = _with_grads()[1]
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(head.parameters(), untouched.parameters()))
    for p, q in zip([*model.parameters(), *head.parameters()], params):
        assert torch.allclose(p.grad, q.grad)
    assert any(not torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), _with_grads()[0].parameters()))


@pytest.mark.parametrize("bad, needle", [("clip_mode=l1", "clip_mode='l1': use agc | norm | value"),
                                         ("clip_grad=-1", "clip_grad=-1.0: must be >= 0"),
                                         ("image_size_schedule=[[2,64],[1,96]]", "bad entry [1, 96]"),
                                         ("image_size_schedule=[64]", "bad entry 64"),
                                         ("compile=1", "'compile' must be bool, got 1"),
                                         ("layer_decay=1.5", "layer_decay=1.5: must be >= 0 and < 1"),
                                         ("amp_dtype=half", "amp_dtype='half': use auto | bfloat16 | float16"),
                                         ("channels_last=fast", "channels_last='fast': use auto, true or false")])
def test_bad_training_options_are_one_line_errors(tiny_data, tmp_path, bad, needle):
    with pytest.raises(UserError, match=re.escape(needle)):
        _train(_cfg(tiny_data, tmp_path, "epochs=1", bad))


# --- layer-wise lr decay ---

def test_layer_decay_gives_timms_geometric_rates_over_the_backbone():
    from pipeline.model import heads
    from pipeline.model.embedder import build_model

    cfg = load_config("default", ["backbone=test_vit", "pretrained=false", "embedding_dim=16", "layer_decay=0.5",
                                  "lr=0.1", "lr_mult.backbone=2", "lr_mult.head=10"])
    model, _ = build_model(cfg, with_weights=False)
    groups = optimizers.param_groups(model, heads.build_head(cfg, 3, [1, 1, 1]), cfg)
    backbone = [g for g in groups if g["name"].startswith("backbone.")]
    rates = sorted({round(g["lr"], 9) for g in backbone})
    assert rates[-1] == pytest.approx(0.2) and len(rates) >= 3  # the last layer at lr x lr_mult, earlier ones lower
    assert all(b / a == pytest.approx(2.0) for a, b in zip(rates, rates[1:]))
    ids = [id(p) for g in backbone for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.backbone.parameters())  # each parameter exactly once
    assert {g["name"]: g["lr"] for g in groups if not g["name"].startswith("backbone.")} == pytest.approx(
        {"neck": 0.1, "head": 1.0})


# --- validation gallery ---

def test_val_gallery_auto_keeps_a_small_fold_whole_and_caps_a_large_one():
    cfg = load_config("default")
    assert cfg["val_gallery"] == "auto"
    assert validation.per_class(cfg, 1_750) == 0 and validation.per_class(cfg, 40_000) == 5
    assert validation.per_class({**cfg, "val_gallery": 3}, 40_000) == 3


# --- runs ---

def test_grad_checkpointing_computes_the_same_training(tiny_data, tmp_path):
    plain, _ = _train(_cfg(tiny_data, tmp_path / "plain", "epochs=1"))
    ckpt, _ = _train(_cfg(tiny_data, tmp_path / "ckpt", "epochs=1", "grad_checkpointing=true"))
    a, b = _weights(plain)["model"], _weights(ckpt)["model"]
    # BatchNorm's running statistics move again at each recompute (torch.utils.checkpoint, as in timm): the
    # weights, which train on the batch statistics, do not
    weights = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(weights) > 20 and max((a[k] - b[k]).abs().max().item() for k in weights) < 1e-5


def test_a_size_schedule_trains_each_epoch_at_its_size_and_resumes_into_it(tiny_data, tmp_path):
    sched = ["image_size_schedule=[[0,32],[1,48]]", "deterministic=true", "scheduler=constant"]
    straight, lines = _train(_cfg(tiny_data, tmp_path / "straight", "epochs=2", *sched))
    assert any("image size 32 -> 48 px from epoch 2" in line for line in lines)
    assert _weights(straight)["image_size"] == 48 and _weights(straight, "best")["image_size"] in (32, 48)
    first, _ = _train(_cfg(tiny_data, tmp_path / "resumed", "epochs=1", *sched))
    assert _weights(first)["image_size"] == 32
    resumed, _ = _train(_cfg(tiny_data, tmp_path / "resumed", "epochs=2", *sched), resume=True)
    a, b = _weights(straight)["model"], _weights(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compile_trains_with_inductor_and_keeps_plain_checkpoints(tiny_data, tmp_path):
    # no dropout (inductor draws its masks from its own generator), no validation fold (fold -1): the
    # training graphs alone are compiled
    same = ["epochs=1", "neck_dropout=0", "fold=-1", "lr=0.002"]
    eager, _ = _train(_cfg(tiny_data, tmp_path / "eager", *same))
    compiled, _ = _train(_cfg(tiny_data, tmp_path / "compiled", *same, "compile=true"))
    a, b = _weights(eager), _weights(compiled)
    assert a["model"].keys() == b["model"].keys()  # no _orig_mod. prefix: embed and the kernel load it as ever
    # the same training up to inductor's float reassociation (BatchNorm's running variances run to ~1e3: their
    # rounding differs in absolute terms more than the weights')
    weights = [k for k in a["model"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in weights) < 2e-3
    losses = [r["progress"]["history"][0]["train_loss"] for r in (a, b)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


@pytest.mark.parametrize("workers, fmt, dev, want", [(-1, "memmap", "cpu", 0), (-1, "jpeg", "cpu", -1),
                                                     (-1, None, "cpu", -1), (-1, "memmap", "cuda", -1),
                                                     (2, "memmap", "cpu", 2)])
def test_embedding_reads_the_memmap_cache_in_the_main_process_by_default(tmp_path, workers, fmt, dev, want):
    from pipeline.data.image_cache import ImageReader
    from pipeline.retrieval.forward import loader_workers

    reader = ImageReader(144, tmp_path if fmt else None, fmt or "memmap")
    assert loader_workers({"num_workers": workers}, reader, dev) == want
