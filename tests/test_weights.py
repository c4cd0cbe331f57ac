"""Backbone weights: the offline failures, the packaged lite0/1/2 weights and the structural key check. (The round
trip through a loopback stand-in hub - fetch once, cached after, export, training from the cache with the network
cut - is part of tests/test_loop.py.)"""
import os
import re
import time

import pytest
import timm
import torch
from hub_standin import hub_env, refused_endpoint

from pipeline.core.errors import UserError
from pipeline.core.network import HUB_TIMEOUTS, set_policy
from pipeline.model.weights import convert_by_structure, load_backbone_weights, packaged_file, read_state_dict

from conftest import assert_one_line_error, cli, tiny_overrides

TINY_REPO = timm.models.get_pretrained_cfg("test_efficientnet").hf_hub_id  # timm/test_efficientnet.r160_in1k


def test_offline_weights_fail_fast_and_train_names_the_command(tiny_data, tmp_path):
    (tmp_path / "nowts.yaml").write_text("backbone: test_efficientnet\n")
    env = hub_env(tmp_path, refused_endpoint())
    t = time.monotonic()
    p = cli("weights", tmp_path / "nowts.yaml", env=env)
    took = time.monotonic() - t
    assert_one_line_error(p, "cannot reach 127.0.0.1 for the weights of test_efficientnet")
    waited = float(re.search(r"after ([0-9.]+)s\)", p.stderr).group(1))  # the stage's own wait on the network
    # the whole call is mostly the interpreter and the torch/timm imports (about 5 s on an idle 2-core machine);
    # huggingface_hub's own retry loop alone took 46 s
    assert waited < 1 and took < 20, (waited, took)
    p = cli("train", tmp_path / "nowts.yaml", *tiny_overrides(tiny_data, tmp_path / "runs", "pretrained=true"),
            env=env)
    assert_one_line_error(p, "no pretrained weights for backbone 'test_efficientnet'", "./run.sh weights nowts")


def test_network_policy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for key in HUB_TIMEOUTS:
        monkeypatch.delenv(key, raising=False)  # restored (removed) after the test
    set_policy(online=True)  # a network stage: the user's mode, bounded hub waits
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["HF_HUB_ETAG_TIMEOUT"] == "5"
    set_policy(online=False)  # a compute stage never reaches the hub
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def _plain(sd):
    return [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]


@pytest.mark.parametrize("backbone,tensors,size", [("tf_efficientnet_lite0", 247, 224),
                                                   ("tf_efficientnet_lite1", 322, 240),
                                                   ("tf_efficientnet_lite2", 322, 260)])
def test_packaged_lite_weights_convert_tensor_for_tensor(backbone, tensors, size):
    source = _plain(read_state_dict(packaged_file(backbone)))
    model = timm.create_model(backbone, pretrained=False)
    load_backbone_weights(model, backbone, packaged_file(backbone))
    loaded = _plain(model.state_dict())
    assert len(source) == len(loaded) == tensors and model.pretrained_cfg["input_size"][-1] == size
    assert [k for k, _ in source[-2:]] == ["_fc.weight", "_fc.bias"]
    for (src_key, src), (key, got) in zip(source[:-2], loaded[:-2]):  # all but the classifier, which is not loaded
        assert torch.equal(src, got), (src_key, key)


def _renamed(sd, rename):
    return {rename(k, v): v for k, v in sd.items()}


def test_foreign_dicts_whose_shapes_line_up_are_refused(tmp_path):
    lite0 = {k: v for k, v in read_state_dict(packaged_file("tf_efficientnet_lite0")).items()
             if not k.endswith("num_batches_tracked")}
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    keras = {"weight": "kernel", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    keys = list(lite0)
    # each BN's weight named as its conv's bias: a conv with bias, then a norm layer without running statistics
    shifted = {}
    for i, k in enumerate(keys):
        prev = keys[i - 1] if i else ""
        name = prev.rpartition(".")[0] + ".bias" if k.endswith(".weight") and lite0[k].dim() == 1 and prev.endswith(
            ".weight") and lite0[prev].dim() == 4 else k
        shifted[name] = lite0[k]
    foreign = {
        "names of another kind (Keras)": _renamed(lite0, lambda k, v: k.rpartition(".")[0] + "." + keras[
            k.rpartition(".")[2]]),
        "BN and conv entries swapped": shifted,
    }
    plain = _plain(target)
    for what, sd in foreign.items():
        # what a shape-order check accepted: the same shapes in the same order as the model's
        assert [tuple(v.shape) for v in sd.values()] == [tuple(v.shape) for _, v in plain], what
        with pytest.raises(ValueError, match="layers in the file"):
            convert_by_structure(sd, target)
        torch.save(sd, tmp_path / "foreign.pth")
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        with pytest.raises(UserError, match="its keys do not match backbone 'tf_efficientnet_lite0'") as e:
            load_backbone_weights(model, "tf_efficientnet_lite0", tmp_path / "foreign.pth")
        assert "\n" not in str(e.value)
    # the same structure but other shapes (lite1's 322 tensors against lite2's) is refused naming the tensor
    lite2 = timm.create_model("tf_efficientnet_lite2", pretrained=False)
    with pytest.raises(UserError, match=r"do not match backbone 'tf_efficientnet_lite2' \(_\S+ is \("):
        load_backbone_weights(lite2, "tf_efficientnet_lite2", packaged_file("tf_efficientnet_lite1"))
