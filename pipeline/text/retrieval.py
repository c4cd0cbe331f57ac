"""Image-text retrieval: Recall@k both ways on held-out captions (text->image: a caption finds its photo; image->text:
a photo finds one of its captions), the text->class scores (a caption's photo's class among the top-5 classes of
the gallery), and `search-text`: the gallery images best matching a sentence, printed and drawn as a PNG grid."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError
from pipeline.text.captions import Captions

KS = (1, 5, 10)


def recall_metrics(images: np.ndarray, image_ids: list, captions: Captions, texts: np.ndarray, ks=KS,
                   max_memory: int = 2 << 30, prefix: str = "") -> dict:
    """{prefix}t2i_r{k} and {prefix}i2t_r{k}: seed 002's Recall@k (hit rate) of the captions against the images and
    of the images against the captions; images (n, D) and texts (m, D) L2-normalised, texts[i] of captions[i]."""
    from pipeline.retrieval.knn import nearest
    from pipeline.retrieval.metrics import instance_metrics

    out = {}
    caption_images = np.asarray(captions.image_ids, object)
    ids = np.asarray(image_ids, object)
    for name, q, g, q_keys, g_keys in (("t2i", texts, images, caption_images, ids),
                                       ("i2t", images, texts, ids, caption_images)):
        idx = nearest(np.ascontiguousarray(q, np.float32), np.ascontiguousarray(g, np.float32), max(ks),
                      max_memory).indices
        rel = g_keys[idx] == q_keys[:, None]
        counts = {}
        for key in g_keys:
            counts[key] = counts.get(key, 0) + 1
        got = instance_metrics(rel, [counts.get(k, 0) for k in q_keys], ks, ["recall@k"])
        out.update({f"{prefix}{name}_r{k}": got[f"recall@{k}"] for k in ks})
    return out


def text_class_scores(texts: np.ndarray, labels: list, gallery, classes: list, max_memory: int = 2 << 30) -> dict:
    """A caption's class found through the gallery (retrieval/embeddings.EmbeddingSet, classes by per-class max
    cosine): Kaggle's MAP@5 and the top-5 hit rate, with chance's hit rate (5 / classes) beside."""
    from pipeline.inference.predict import predict
    from pipeline.retrieval.metrics import map_at_k

    top = predict([texts.astype(np.float16)], gallery, classes, max_memory=max_memory, log=lambda *a: None)
    hits = [label in row for row, label in zip(top, labels)]
    return {"t2c_map5": map_at_k(top, labels), "t2c_top5": float(np.mean(hits)) if hits else 0.0,
            "t2c_top5_chance": min(1.0, 5 / max(1, len(set(gallery.labels))))}


def text_rows(cfg: dict, name: str, ks=KS, log=print) -> tuple:
    """(the row of the untrained model, the trained run's columns) for `evaluate` of a clip run: Recall@k both ways
    on the validation images and their captions, and the text->class scores of those captions against the training
    images without the validation ones. The untrained model is the run's initialisation (ImageNet image encoder,
    random text tower): the reference."""
    from pipeline.core.device import pick_device
    from pipeline.data.folds import split
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.model.clip import encode_texts
    from pipeline.retrieval.embeddings import EmbeddingSet, item_set
    from pipeline.retrieval.forward import embed_items
    from pipeline.retrieval.runsets import load_embeddings
    from pipeline.text.captions import read_captions

    ds, train_items, val_items, classes = split(cfg)
    held_out = read_captions(cfg, ds).of(val_items)
    if not len(held_out):
        raise UserError(f"{cfg['data']}: the validation images of fold {cfg['fold']} have no captions to score")
    device, label = pick_device(), {it.image_id: it.label for it in val_items}
    labels = [label[i] for i in held_out.image_ids]

    def row(model_name, head, val: EmbeddingSet, gallery: EmbeddingSet):
        texts = encode_texts(head.to(device), held_out.texts, device)
        out = {"model": model_name, **recall_metrics(np.asarray(val.array), val.ids, held_out, texts, ks,
                                               cfg["max_memory"])}
        out.update(text_class_scores(texts, labels, gallery, classes, cfg["max_memory"]))
        return out

    model, head = untrained(cfg, len(classes))
    tfms = _transforms(cfg, model)
    q, _ = embed_items(model.to(device), val_items, tfms["val"], cfg, device)  # seeded per sample: no RNG drawn
    g, _ = embed_items(model, train_items, tfms["test"], cfg, device)
    reference = row(f"untrained {name}", head, item_set(q, val_items), item_set(g, train_items))
    inputs = load_embeddings([cfg], DEFAULTS, log=log)
    trained = row(name, text_head(cfg), inputs.val, inputs.val_gallery)
    log(f"evaluated {cfg['name']} fold {cfg['fold']} image-text: {len(held_out)} held-out captions of "
        f"{len(val_items)} images")
    del trained["model"]
    return reference, trained


def untrained(cfg: dict, n_classes: int):
    """(model, head) as a run of cfg starts: seeded as training seeds them, the image encoder's pretrained weights."""
    import torch

    from pipeline.model.embedder import build_model
    from pipeline.model.heads import build_head

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model, _ = build_model(cfg)
        head = build_head(cfg, n_classes)
    return model.eval(), head.eval()


def _transforms(cfg, model):
    from pipeline.data.transforms import build_transform
    from pipeline.model.backbone import input_config

    size, _, _ = input_config(cfg, model.backbone)
    return {k: build_transform(k, cfg, size) for k in ("val", "test")}


@dataclass
class Match:
    """One search-text answer."""
    image_id: str
    label: str
    score: float
    path: Path


def search_text(cfg: dict, query: str, k: int = 5, out: str | None = None, log=print) -> list:
    """The k gallery images (every training image) closest to the sentence under the run's checkpoint; printed
    with their classes, and drawn into a PNG grid (out, default <run>/search/<query>.png)."""
    from pipeline.config import run_dir
    from pipeline.core.device import pick_device
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.tricks import DEFAULTS
    from pipeline.model.clip import encode_texts
    from pipeline.retrieval.knn import nearest
    from pipeline.retrieval.runsets import load_embeddings

    if not query.strip():
        raise UserError("search-text: give a sentence, e.g. \"a room with a red bed and two lamps\"")
    if k < 1:
        raise UserError(f"--k {k}: must be 1 or more")
    head = text_head(cfg)
    gallery = load_embeddings([cfg], DEFAULTS, log=log).gallery
    device = pick_device()
    text = encode_texts(head.to(device), [query], device)
    found = nearest(text, np.asarray(gallery.array), k)
    paths = {it.image_id: it.path for it in load_dataset(cfg["data"], cfg).train}
    matches = [Match(gallery.ids[i], gallery.labels[i], float(s), paths[gallery.ids[i]])
               for i, s in zip(found.indices[0], found.scores[0])]
    for n, m in enumerate(matches, 1):
        log(f"{n}. {m.image_id}  class {m.label}  cosine {m.score:.3f}")
    from pipeline.reports.pictures import thumbnail
    from pipeline.reports.plots import retrieval_grid

    png = Path(out) if out else run_dir(cfg) / "search" / f"{_slug(query)}.png"
    import textwrap

    words = np.full((16, 128, 3), 255, np.uint8)  # the query's cell: a blank strip under its text, the title
    wrapped = "\n".join(textwrap.wrap(query, 26, max_lines=6, placeholder=" ..."))
    retrieval_grid([{"image": words, "label": wrapped, "matches": [(thumbnail(m.path), m.label, m.score, None)
                                                                   for m in matches]}], png)
    log(f"wrote {png}")
    return matches


def text_head(cfg: dict):
    """The clip head (text tower) of the run's checkpoint; a UserError for a run of another head."""
    from pipeline.config import run_dir
    from pipeline.core import checkpoint
    from pipeline.model.heads import build_head

    path = run_dir(cfg) / f"{cfg['checkpoint']}.pt"
    if not path.is_file():
        raise UserError(f"{path} not found: train first (./run.sh train {cfg['name']} --fold {cfg['fold']})")
    state = checkpoint.load(path, cfg)
    if state["config"]["head"] != "clip":
        raise UserError(f"{path}: trained with head={state['config']['head']}, which has no text tower; search text "
                        "with a run of head=clip (e.g. ./run.sh train demo_clip)")
    head = build_head(state["config"], len(state["classes"]))
    head.load_state_dict(state["head"])
    return head.eval()


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(w for w in keep.split("_") if w)[:60] or "query"
