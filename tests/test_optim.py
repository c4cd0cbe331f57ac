"""Parameter groups, optimisers and schedulers (every registry entry), ReduceLROnPlateau against torch's, EMA,
accumulation."""
import copy
import csv
import math

import pytest
import torch

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.data.folds import split
from pipeline.model.embedder import build_model
from pipeline.model.heads import build_head
from pipeline.training.optimizers import OPTIMIZERS, make_ema, make_optimizer, param_groups
from pipeline.training.schedulers import SCHEDULERS, Plateau, lr_factor

from conftest import cli, tiny_overrides


def _tiny(*extra):
    cfg = load_config("default", ["backbone=test_efficientnet", "pretrained=false", "embedding_dim=16", *extra])
    model, _ = build_model(cfg)
    return cfg, model, build_head(cfg, 5, [3, 1, 4, 1, 5])


def test_param_groups_partition_parameters_with_their_multipliers():
    cfg, model, head = _tiny("lr=0.01", "pooling=gem", "lr_mult.head=10", "lr_mult.neck=2", "lr_mult.backbone=0.5")
    groups = param_groups(model, head, cfg)
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx({"backbone": 0.005, "neck": 0.02, "head": 0.1})
    ids = [id(p) for g in groups for p in g["params"]]
    everything = list(model.parameters()) + list(head.parameters())
    assert len(ids) == len(set(ids)) == len(everything)  # each parameter in exactly one group
    neck = next(g for g in groups if g["name"] == "neck")["params"]
    assert any(p is model.pool.p for p in neck)  # GeM's p learns with the neck
    opt = make_optimizer(cfg, model, head)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in groups]


# each optimiser's torch class and the config's momentum / weight_decay as torch names them (adam's beta1 is momentum)
HYPER = ["lr=0.01", "momentum=0.8", "weight_decay=0.01"]
TORCH_OPTIMIZERS = {"sgd": (torch.optim.SGD, {"momentum": 0.8, "weight_decay": 0.01}),
                    "adam": (torch.optim.Adam, {"betas": (0.8, 0.999), "weight_decay": 0.01}),
                    "adamw": (torch.optim.AdamW, {"betas": (0.8, 0.999), "weight_decay": 0.01})}


def _steps(model, head, opt, n=3):
    """n optimiser steps on the same seeded batches of 4 and dropout masks (two copies see the same gradients)."""
    torch.manual_seed(0)
    for _ in range(n):
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
        opt.zero_grad()
        head(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_takes_the_configs_momentum_weight_decay_and_betas(name):
    assert name in TORCH_OPTIMIZERS, f"optimizer {name}: add its torch class and hyperparameters to TORCH_OPTIMIZERS"
    cls, want = TORCH_OPTIMIZERS[name]
    cfg, model, head = _tiny(f"optimizer={name}", *HYPER)
    ref_model, ref_head = copy.deepcopy(model), copy.deepcopy(head)
    opt = make_optimizer(cfg, model, head)
    assert type(opt) is cls
    for where in (opt.defaults, *opt.param_groups):  # every group, not only the defaults a group may override
        assert {k: where[k] for k in want} == want, where.get("name", "defaults")
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    _steps(model, head, opt)
    for g in opt.param_groups:  # a step moves every group
        assert any(not torch.equal(p, before[id(p)]) for p in g["params"]), g["name"]
    # the same steps through torch's own class with the config's values give the same weights
    ref = cls(param_groups(ref_model, ref_head, cfg), lr=cfg["lr"], **want)
    _steps(ref_model, ref_head, ref)
    for a, b in zip([*model.parameters(), *head.parameters()], [*ref_model.parameters(), *ref_head.parameters()]):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_warms_up_then_follows_its_shape(name):
    cfg = load_config("default", [f"scheduler={name}", "lr=0.1", "min_lr=0.01", "warmup_steps=4"])
    total = 104
    assert [lr_factor(cfg, s, total) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    start, mid, end = (lr_factor(cfg, s, total) for s in (4, 54, 104))
    expected = {"cosine": (1.0, 0.55, 0.1), "linear": (1.0, 0.55, 0.1),
                "constant": (1.0, 1.0, 1.0), "plateau": (1.0, 1.0, 1.0)}[name]
    assert (start, mid, end) == pytest.approx(expected)
    if name == "cosine":
        quarter = lr_factor(cfg, 29, total)
        assert quarter == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_plateau_cuts_like_torch_reduce_lr_on_plateau():
    cfg = load_config("default", ["scheduler=plateau", "plateau.patience=1", "plateau.factor=0.8"])
    ours = Plateau(cfg)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=1, factor=0.8)
    for metric in [0.1, 0.2, 0.2, 0.19, 0.25, 0.25, 0.25, 0.25, 0.3, 0.1, 0.1, 0.1]:
        ours.step(metric)
        ref.step(metric)
        assert ours.scale == pytest.approx(opt.param_groups[0]["lr"])
    assert ours.scale < 1.0


def test_ema_tracks_weights_and_rejects_bad_decay():
    cfg, model, _ = _tiny("ema=0.5")
    ema = make_ema(cfg, model)
    p = next(model.neck.parameters())
    with torch.no_grad():
        start = p.clone()
        p.add_(1.0)
    ema.update(model)
    q = dict(ema.module.named_parameters())[next(n for n, x in model.named_parameters() if x is p)]
    assert torch.allclose(q, start + 0.5)  # halfway with decay 0.5
    assert make_ema(load_config("default"), model) is None
    with pytest.raises(UserError, match="ema=1.5"):
        make_ema(load_config("default", ["ema=1.5"]), model)


def test_accumulation_ema_and_plateau_in_training(tiny_data, tmp_path):
    """accum_steps=2 halves the optimiser steps; ema.pt is written, evaluated and embeddable."""
    cfg = tmp_path / "acc.yaml"
    cfg.write_text("accum_steps: 2\nema: 0.9\nscheduler: plateau\n")
    p = cli("train", cfg, *tiny_overrides(tiny_data, tmp_path, "batch_size=4"))
    assert p.returncode == 0, p.stderr
    run = tmp_path / "acc" / "fold0"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    _, train_items, _, _ = split(load_config(str(cfg), tiny_overrides(tiny_data, tmp_path, "batch_size=4")))
    steps_per_epoch = len(train_items) // 4 // 2
    assert [int(r["step"]) for r in rows] == [steps_per_epoch * (e + 1) for e in range(len(rows))]
    assert all(r["ema_val_map5"] != "" for r in rows)
    assert (run / "ema.pt").is_file()
    p = cli("embed", cfg, "--checkpoint", "ema", *tiny_overrides(tiny_data, tmp_path, "batch_size=4"))
    assert p.returncode == 0, p.stderr
    assert "ema.pt" in (run / "embeddings" / "manifest.json").read_text()
