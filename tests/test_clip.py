"""Image-text training (seed 002): the contrastive loss against a hand computation, the clip head and its text
tower, Recall@k against brute force, captions (make-data's and a Flickr30k file), a tiny clip run end to end with
search-text, and evaluate's untrained reference row."""
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_config
from pipeline.model.clip import clip_loss, tokenize
from pipeline.model.heads import build_head
from pipeline.text.retrieval import recall_metrics

from conftest import assert_one_line_error, cli, tiny_overrides

TINY_TEXT = ["head=clip", "neck=projection", "clip.context=24", "clip.width=32", "clip.layers=1", "clip.heads=2",
             "clip.normalize=true", "clip.temperature=0.1", "clip.soft_targets=false"]


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _clip_loss_numpy(img, txt, scale, soft):
    logits = scale * txt @ img.T
    if soft:
        sim = scale * (img @ img.T + txt @ txt.T) / 2
        targets = np.exp(sim - sim.max(1, keepdims=True))
        targets /= targets.sum(1, keepdims=True)
    else:
        targets = np.eye(len(img))
    texts = -(targets * _log_softmax(logits)).sum(1)
    images = -(targets.T * _log_softmax(logits.T)).sum(1)
    return ((texts + images) / 2).mean()


@pytest.mark.parametrize("soft", [False, True])
def test_clip_loss_matches_a_hand_computation(soft):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    for scale in (1.0, 3.0):
        got = clip_loss(img, txt, scale, soft).item()
        np.testing.assert_allclose(got, _clip_loss_numpy(img.numpy(), txt.numpy(), scale, soft), rtol=1e-12)
    # matched pairs far apart from the rest: the hard-target loss goes to 0
    eye = torch.eye(4, dtype=torch.float64) * 20
    assert clip_loss(eye, eye, 1.0, False).item() < 1e-6


def _cfg(*extra):
    return load_config("default", ["embedding_dim=16", *TINY_TEXT, *extra])


def test_clip_head_is_the_loss_of_its_text_tower_and_learns_its_temperature():
    from pipeline.training.optimizers import param_groups

    torch.manual_seed(0)
    head = build_head(_cfg("clip.learn_temperature=true"), 3)
    tokens = torch.from_numpy(tokenize(["a red bed", "two lamps", "a blue wardrobe", "a window"], 24))
    assert tokens.shape == (4, 24) and tokens.dtype == torch.int64
    emb = torch.randn(4, 16, requires_grad=True)
    head.eval()  # the text projection's dropout off: two calls give the same text embeddings
    loss = head(emb, tokens)
    text = torch.nn.functional.normalize(head.encode_text(tokens), dim=1)
    want = clip_loss(torch.nn.functional.normalize(emb, dim=1), text, 10.0)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert emb.grad.abs().sum() > 0 and head.log_scale.grad is not None
    assert all(p.grad is not None for p in head.text.encoder.parameters() if p.requires_grad and p.dim() > 1)
    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2)
    groups = {g["name"]: g for g in param_groups(model, head, _cfg("lr_mult.text=0.1", "lr=1.0"))}
    assert groups["text"]["lr"] == 0.1 and groups["head"]["lr"] == 1.0
    n_text = sum(p.numel() for p in head.text.encoder.parameters())
    assert sum(p.numel() for p in groups["text"]["params"]) == n_text
    with pytest.raises(Exception, match="caption tokens"):
        head(emb, torch.tensor([0, 1, 2, 0]))


def _recall_brute(q, g, q_keys, g_keys, k):
    hits = []
    for i in range(len(q)):
        order = sorted(range(len(g)), key=lambda j: -float(q[i] @ g[j]))
        hits.append(any(g_keys[j] == q_keys[i] for j in order[:k]))
    return float(np.mean(hits))


def test_recall_at_k_matches_brute_force():
    from pipeline.text.captions import Captions

    rng = np.random.default_rng(1)
    images = rng.normal(size=(12, 8)).astype(np.float32)
    texts = images[rng.integers(0, 12, 40)] + rng.normal(scale=1.5, size=(40, 8)).astype(np.float32)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    images, texts = norm(images), norm(texts)
    ids = [f"im{i}" for i in range(12)]
    owner = [ids[int(np.argmax(t @ images.T + rng.normal(scale=2, size=12)))] for t in texts]
    captions = Captions(owner, [f"caption {i}" for i in range(40)])
    got = recall_metrics(images, ids, captions, texts, ks=(1, 5, 10), prefix="val_")
    for k in (1, 5, 10):
        assert got[f"val_t2i_r{k}"] == pytest.approx(_recall_brute(texts, images, owner, ids, k))
        assert got[f"val_i2t_r{k}"] == pytest.approx(_recall_brute(images, texts, ids, owner, k))
    assert 0 < got["val_t2i_r1"] < got["val_t2i_r10"] <= 1


def test_make_data_writes_captions_that_describe_each_photo(tiny_data):
    from pipeline.data.layouts import load_dataset

    ds = load_dataset(tiny_data / "data")
    caps = pd.read_csv(tiny_data / "data" / "captions.csv", dtype=str)
    per_image = caps.groupby("image_id").size()
    assert set(per_image.index) == {it.image_id for it in ds.train + ds.test}
    assert (per_image == 5).all()
    assert caps["caption"].str.contains("walls").mean() > 0.5  # every image's first caption names the walls
    # photos of one hotel differ in what they show: their full (first) captions are mostly distinct
    first = caps.groupby("image_id")["caption"].first()
    assert first.nunique() > 0.7 * len(first)


def test_flickr30k_caption_layout_reads_both_file_forms(tiny_data, tmp_path):
    from pipeline.data.layouts import load_dataset
    from pipeline.text.captions import read_captions

    ds = load_dataset(tiny_data / "data")
    a, b = ds.train[0], ds.train[1]
    results = tmp_path / "results.csv"
    results.write_text(f"image_name| comment_number| comment\n{a.path.name}| 0| A red bed .\n"
                       f"{a.path.name}| 1| Two lamps | and a desk\n{b.path.name}| 0| A window .\n")
    tokens = tmp_path / "results_20130124.token"
    tokens.write_text(f"{b.path.name}#0\tA window .\n{b.path.name}#1\tA wardrobe .\n")
    cfg = load_config("default", [f"data={tiny_data / 'data'}", "captions.layout=flickr30k"])
    got = read_captions({**cfg, "captions": {"file": str(results), "layout": "flickr30k"}}, ds)
    assert got.image_ids == [a.image_id, a.image_id, b.image_id]
    assert got.texts[1] == "Two lamps | and a desk"
    got = read_captions({**cfg, "captions": {"file": str(tokens), "layout": "flickr30k"}}, ds)
    assert got.image_ids == [b.image_id] * 2 and got.texts == ["A window .", "A wardrobe ."]
    results.write_text("nobody.jpg| 0| a bed\n")
    with pytest.raises(Exception, match="nobody.jpg"):
        read_captions({**cfg, "captions": {"file": str(results), "layout": "flickr30k"}}, ds)


@pytest.fixture(scope="module")
def clip_run(tiny_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cliprun")
    (runs / "c.yaml").write_text("# tiny clip\nselect_on: val_t2i_r5\n")
    p = cli("train", runs / "c.yaml", *tiny_overrides(tiny_data, runs, "epochs=1", *TINY_TEXT))
    assert p.returncode == 0, p.stderr
    return runs, p.stdout + p.stderr


def test_a_clip_run_logs_recall_and_search_text_finds_images(clip_run, tiny_data):
    runs, out = clip_run
    assert "captions:" in out and "text->image R@1/5/10" in out, out
    metrics = pd.read_csv(runs / "c" / "fold0" / "metrics.csv")
    for col in ("val_t2i_r1", "val_t2i_r5", "val_i2t_r10", "val_map5"):
        assert 0 <= metrics[col].iloc[-1] <= 1, metrics.columns
    png = runs / "hits.png"
    sentence = "a bed with white sheets and two lamps"
    p = cli("search-text", runs / "c.yaml", sentence, "--k", "3", "--out", png,
            "--overrides", *tiny_overrides(tiny_data, runs, *TINY_TEXT))
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 3 and all("class" in line for line in lines), p.stdout
    assert png.is_file() and png.stat().st_size > 1000
    # the answers are the cosine brute force (float64, numpy) of the sentence's embedding by the run's text tower
    # against every training image's cached embedding, best first
    from pipeline.model.clip import encode_texts
    from pipeline.text.retrieval import text_head

    cfg = load_config(runs / "c.yaml", tiny_overrides(tiny_data, runs, *TINY_TEXT))
    text = encode_texts(text_head(cfg), [sentence], "cpu")[0].astype(np.float64)
    emb = runs / "c" / "fold0" / "embeddings"
    gallery = pd.read_csv(emb / "gallery.csv", dtype=str)
    cos = np.load(emb / "gallery.npy").astype(np.float64) @ text
    best = np.argsort(-cos, kind="stable")[:3]
    got = [line.split() for line in lines]  # "1. <image id>  class <label>  cosine <score>"
    assert [(w[1], w[3]) for w in got] == [(gallery["image_id"][j], gallery["label"][j]) for j in best], p.stdout
    assert [float(w[5]) for w in got] == pytest.approx(cos[best], abs=6e-4)


def test_evaluate_text_has_the_untrained_reference_row(clip_run, tiny_data):
    from pipeline.experiments.evaluate import evaluate_runs

    runs, _ = clip_run
    cfg = load_config(runs / "c.yaml", tiny_overrides(tiny_data, runs, *TINY_TEXT))
    rows = evaluate_runs([cfg], ["text"], [1, 5], log=lambda *a: None)
    assert [r["model"] for r in rows] == ["untrained c", "c"]
    # chance's top-5 hit rate: 5 / the classes of the gallery the captions search (fold 0's training images
    # without the validation ones), read from the run's cached embeddings
    emb = runs / "c" / "fold0" / "embeddings"
    val_ids = set(pd.read_csv(emb / "val.csv", dtype=str)["image_id"])
    gallery = pd.read_csv(emb / "gallery.csv", dtype=str)
    n_classes = gallery.loc[~gallery["image_id"].isin(val_ids), "label"].nunique()
    assert n_classes == 10  # the tiny dataset's 10 hotels all have training images in fold 0
    for r in rows:
        assert {"t2i_r1", "t2i_r5", "i2t_r5", "t2c_map5", "t2c_top5", "t2c_top5_chance"} <= set(r)
        assert 0 <= r["t2i_r1"] <= r["t2i_r5"] <= 1
        assert r["t2c_top5_chance"] == 5 / n_classes == 0.5


def test_search_text_needs_a_clip_run(trained):
    data, runs = trained
    p = cli("search-text", runs / "a.yaml", "a red bed", "--overrides", *tiny_overrides(data, runs))
    assert_one_line_error(p, "head=arcface", "demo_clip")


def test_select_on_names_a_validation_metric_of_the_head():
    from pipeline.core.errors import UserError
    from pipeline.training.validation import check

    check(load_config("default", TINY_TEXT + ["select_on=val_i2t_r10"]))
    for bad in (["select_on=val_t2i_r5"], ["select_on=val_loss"]):  # recall needs head=clip; a loss is no score
        with pytest.raises(UserError, match="select_on="):
            check(load_config("default", bad))
