"""Every recipe config of the sources builds its real timm model and takes one training step on the CPU
(pretrained=false, small images), through the same registries as `./run.sh train`."""
import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data.dataset import ImageDataset
from pipeline.data.folds import split
from pipeline.data.samplers import build_sampler
from pipeline.data.transforms import build_transform
from pipeline.model.backbone import input_config
from pipeline.model.embedder import build_model
from pipeline.model.heads import build_head
from pipeline.text.captions import text_data
from pipeline.training.optimizers import make_optimizer

# recipe -> a small image size its architecture accepts (patch 14 / patch 8 grids, Swin windows)
RECIPES = {
    "supcon_clip_vitl": 56,
    "triplet_effb5": 64,
    "triplet_effv2m": 64,
    "triplet_vitb8": 32,
    "triplet_swinb": 64,
    "triplet_resmlp36": 64,
    "m1_losstransform": 64,  # m1 itself plus a sampler and a loss term: this is where m1's eca_nfnet_l2 trains
    "peer_best": 64,
    "projection_resnet50": 64,
    "clip_resnet50": 64,  # clip_efficientnet and clip_inception differ from it in the backbone alone (below)
    "clip_mobilenet": 64,
}


def test_every_config_names_a_timm_backbone():
    import timm

    from pipeline.config import CONFIG_DIR

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        backbone = load_config(path.stem)["backbone"]
        assert timm.is_model(backbone) or backbone in timm.list_models(), (path.name, backbone)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_and_takes_a_training_step(name, tiny_data):
    size = RECIPES[name]
    cfg = load_config(name, ["pretrained=false", f"image_size={size}", f"data={tiny_data / 'data'}",
                             f"folds_file={tiny_data / 'folds.csv'}"])
    ds, train_items, val_items, classes = split(cfg)
    text, train_items = text_data(cfg, ds, train_items, val_items, log=lambda *a: None)  # clip: caption targets
    codes = {c: i for i, c in enumerate(classes)}
    labels = [codes[it.label] for it in train_items]
    torch.manual_seed(0)
    model, _ = build_model(cfg, with_weights=False)
    head = build_head(cfg, len(classes), np.bincount(labels, minlength=len(classes)).tolist())
    got_size, mean, std = input_config(cfg, model.backbone)
    assert got_size == size
    dataset = ImageDataset(train_items, build_transform("train", cfg, size), codes,
                           targets=text.targets if text else None)
    batch = next(iter(build_sampler(cfg, labels, epoch=0)))
    assert len(batch) == cfg["batch_size"]
    x = torch.stack([dataset[key][0] for key in batch])
    y = torch.stack([torch.as_tensor(dataset[key][1]) for key in batch])
    opt = make_optimizer(cfg, model, head)
    before = [p.detach().clone() for p in model.neck.parameters()]
    model.train(), head.train()
    emb = model(x)
    assert emb.shape == (len(batch), cfg["embedding_dim"])
    loss = head(emb.float(), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.neck.parameters()))
