import math
import time

import numpy as np
import pytest
import torch
from torch.nn.utils.parametrize import is_parametrized

from pipeline.config import load_config
from pipeline.core.errors import UserError
from pipeline.model.backbone import input_config
from pipeline.model.embedder import build_model
from pipeline.model.heads import HEADS
from pipeline.model.necks import NECKS
from pipeline.model.weights import packaged_file, read_state_dict


def test_neck_structure_and_embedding_shape():
    cfg = load_config("default", ["backbone=test_efficientnet", "pretrained=false", "embedding_dim=48"])
    model, source = build_model(cfg)
    assert source is None
    lin1, bn1, drop, lin2, bn2 = model.neck
    assert is_parametrized(lin1, "weight") and is_parametrized(lin2, "weight")  # weight-normalised
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (model.backbone.num_features, 96, 48)
    assert isinstance(bn1, torch.nn.BatchNorm1d) and isinstance(bn2, torch.nn.BatchNorm1d)
    assert drop.p == 0.2
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 48)


def test_gem_pooling_and_input_config():
    cfg = load_config("default", ["backbone=test_resnet", "pretrained=false", "embedding_dim=16", "pooling=gem",
                                  "image_size=40", "mean=[0.1,0.2,0.3]"])
    model, _ = build_model(cfg)
    assert model.pool is not None and float(model.pool.p.detach()) == 3.0
    size, mean, std = input_config(cfg, model.backbone)
    assert size == 40 and mean == (0.1, 0.2, 0.3) and std == tuple(model.backbone.pretrained_cfg["std"])
    model.eval()
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 16)


@pytest.mark.parametrize("neck", sorted(NECKS))
def test_every_neck_gives_the_embedding_and_learns(neck):
    torch.manual_seed(0)
    cfg = load_config("default", ["backbone=test_efficientnet", "pretrained=false", "embedding_dim=24",
                                  f"neck={neck}"])
    model, _ = build_model(cfg)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 24)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.neck.parameters())


def test_transformer_backbone_size_and_pooling():
    """A ViT is rebuilt for the configured size (its token grid is fixed at creation) and keeps its class-token
    pooling; GeM on a transformer is a one-line error."""
    base = ["backbone=vit_base_patch8_224", "pretrained=false", "image_size=32", "embedding_dim=8"]
    model, _ = build_model(load_config("default", base))
    assert model.backbone.global_pool == "token"
    assert input_config(load_config("default", base), model.backbone)[0] == 32
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 8)
    with pytest.raises(UserError, match="pooling=gem needs a CNN"):
        build_model(load_config("default", base + ["pooling=gem"]))
    with pytest.raises(UserError, match="neck 'nope' unknown"):
        build_model(load_config("default", base + ["neck=nope"]))


def test_lite0_package_weights_load_into_timm():
    cfg = load_config("default", ["embedding_dim=16"])  # default backbone: tf_efficientnet_lite0
    model, source = build_model(cfg)
    shipped = read_state_dict(packaged_file("tf_efficientnet_lite0"))
    assert source == f"file:{packaged_file('tf_efficientnet_lite0')}"
    # key-for-key: the stem conv and the last BN match the package's tensors exactly
    assert torch.equal(model.backbone.conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, shipped["_bn1.running_var"])
    assert torch.equal(model.backbone.blocks[4][0].conv_pw.weight, shipped["_blocks.8._expand_conv.weight"])


def test_pretrained_offline_without_source_fails_fast():
    cfg = load_config("default", ["backbone=resnet18"])
    t = time.time()
    with pytest.raises(UserError, match="no pretrained weights for backbone 'resnet18' offline.*pretrained_file"):
        build_model(cfg)
    assert time.time() - t < 1.0


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'resnet_nope'"):
        build_model(load_config("default", ["backbone=resnet_nope"]))


def test_pretrained_file_wrong_model(tmp_path):
    torch.save({"a.weight": torch.zeros(3)}, tmp_path / "w.pth")
    cfg = load_config("default", ["backbone=test_resnet", f"pretrained_file={tmp_path / 'w.pth'}"])
    with pytest.raises(UserError, match="do not match backbone 'test_resnet'"):
        build_model(cfg)


def _arcface_by_hand(emb, w, labels, s, m):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    c = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = e @ c.T
    total = 0.0
    for i, y in enumerate(labels):
        logits = s * cos[i].copy()
        t = cos[i, y]
        phi = math.cos(math.acos(np.clip(t, -1, 1)) + m)
        logits[y] = s * (phi if t > math.cos(math.pi - m) else t - math.sin(math.pi - m) * m)
        total += -(logits[y] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    return total / len(labels)


def test_arcface_matches_hand_computation():
    torch.manual_seed(0)
    head = HEADS["arcface"](8, 5, s=30.0, m=0.2)
    emb = torch.randn(12, 8, dtype=torch.float64)
    labels = torch.randint(0, 5, (12,))
    # one sample with its class weight nearly opposite, to exercise the hard-margin branch
    emb[0] = -head.weight.detach()[labels[0]].double()
    loss = head(emb.float(), labels).item()
    ref = _arcface_by_hand(emb.numpy(), head.weight.detach().double().numpy(), labels.numpy(), 30.0, 0.2)
    assert abs(loss - ref) < 1e-4 * max(1, ref)
