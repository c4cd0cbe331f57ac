"""Two-stage fine-tuning (init_from=RUN): another run's backbone and neck weights exactly, its head only for the
same classes and kind of head, a mismatching model a one-line error naming the key, a resume winning over it."""
import pytest
import torch
import yaml

from pipeline.config import load_config
from pipeline.core import checkpoint
from pipeline.core.errors import UserError
from pipeline.core.io import read_table
from pipeline.data.layouts import load_dataset
from pipeline.model.embedder import build_model
from pipeline.model.heads import build_head

from conftest import tiny_overrides


def _fresh(tiny, runs, name, *extra):
    """A new model and head of config `name` (random init) and the data's classes."""
    cfg = load_config(str(runs / f"{name}.yaml"), tiny_overrides(tiny, runs, "epochs=1", *extra))
    classes = load_dataset(cfg["data"]).classes
    torch.manual_seed(7)
    model, _ = build_model(cfg, with_weights=False)
    return model, build_head(cfg, len(classes)), classes


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_copies_backbone_and_neck_and_the_head_of_the_same_classes(trained):
    tiny, runs = trained
    ck = checkpoint.load(runs / "a" / "fold0" / "best.pt")
    model, head, classes = _fresh(tiny, runs, "a")
    assert not _equal(model.state_dict(), ck["model"])
    said = []
    source = checkpoint.init_from(model, head, runs / "a" / "fold0", classes, said.append)
    assert source == f"init_from {runs / 'a' / 'fold0' / 'best.pt'}"
    assert _equal(model.state_dict(), ck["model"]) and _equal(head.state_dict(), ck["head"])  # BN statistics too
    assert said == [f"{source}: backbone and neck loaded, head loaded ({len(classes)} classes, the same)"]

    model, head, _ = _fresh(tiny, runs, "a")
    before, said = _params(head), []
    checkpoint.init_from(model, head, runs / "a" / "fold0", classes[::-1], said.append)  # same classes, other order
    assert _equal(model.state_dict(), ck["model"]) and _equal(_params(head), before)
    assert "head re-initialised (its 10 classes are not this run's 10 in the same order)" in said[0]

    ckb = checkpoint.load(runs / "b" / "fold0" / "best.pt")  # b: cosface head; an arcface head cannot take it
    model, head, _ = _fresh(tiny, runs, "b", "head=arcface")
    before, said = _params(head), []
    checkpoint.init_from(model, head, runs / "b" / "fold0", classes, said.append)
    assert _equal(model.state_dict(), ckb["model"]) and _equal(_params(head), before)
    assert "head re-initialised (its cosface head's weights do not fit this ArcFace)" in said[0]


@pytest.mark.parametrize("extra,key", [(("pooling=gem",), "pool.p"), (("embedding_dim=16",), "neck.")])
def test_a_mismatching_model_is_a_one_line_error(trained, extra, key):
    tiny, runs = trained
    model, head, classes = _fresh(tiny, runs, "a", *extra)
    with pytest.raises(UserError) as e:
        checkpoint.init_from(model, head, runs / "a" / "fold0", classes)
    msg = str(e.value)
    assert msg.startswith(f"init_from={runs / 'a' / 'fold0'}: its ") and key in msg and "\n" not in msg, msg
    with pytest.raises(UserError, match="no best.pt in it"):
        checkpoint.init_from(model, head, runs / "a", classes)


def test_training_starts_from_the_run_and_a_resume_wins(trained, tmp_path):
    """lr=0: one epoch leaves every parameter where init_from put it (BatchNorm statistics move: not compared)."""
    from pipeline.training.loop import train

    tiny, runs = trained
    src = runs / "a" / "fold0"
    truth = read_table(tiny / "data" / "test_truth.csv").head(3)
    pseudo = tmp_path / "pseudo.csv"
    truth.set_axis(["image_id", "label"], axis=1).to_csv(pseudo, index=False)
    cfg = load_config(str(runs / "a.yaml"), tiny_overrides(tiny, tmp_path, "epochs=1", "lr=0", f"init_from={src}",
                                                            f"pseudo={pseudo}"))
    lines = []
    out = train(cfg, log=lines.append)
    text = "\n".join(lines)
    assert f"(init_from {src / 'best.pt'})" in text and "head loaded" in text, text
    assert "pseudo-labels: 3 test images" in text and "val gallery" in text, text  # the pseudo images: no gallery
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["init_from"], saved["pseudo"]) == (str(src), str(pseudo))
    mine, theirs = checkpoint.load(out / "best.pt"), checkpoint.load(src / "best.pt")
    for part in ("model", "head"):
        names = [k for k in theirs[part] if "running_" not in k and "num_batches" not in k]
        assert all(torch.equal(mine[part][k], theirs[part][k]) for k in names), part

    lines.clear()  # --resume: last.pt wins, init_from is not even read
    train(dict(cfg, init_from=str(tmp_path / "gone")), resume=True, log=lines.append)
    assert any(x.startswith("resuming") for x in lines), lines
