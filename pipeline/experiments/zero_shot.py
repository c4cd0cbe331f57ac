"""The zero-shot reference row: a timm backbone's pretrained, pooled features (no neck, no training) scored like a
trained run; its features are cached in runs/zero-shot/<backbone>/<size>/."""
import json
from collections.abc import Callable
from pathlib import Path


def zero_shot_row(cfg: dict, backbone: str, metrics: list[str], ks: list[int], leave_one_out: bool = False,
                  log: Callable[[str], object] = print, queries: str = "val") -> dict:
    """Row 'zero-shot BACKBONE': the pretrained backbone's pooled features (the config's pooling, no neck, no
    training), queries with the val transform (test transform for test queries), gallery with the test transform,
    L2-normalised, scored like a trained run. Features are cached in runs/zero-shot/<backbone>/<size>/."""
    import torch

    from pipeline.core.device import pick_device
    from pipeline.data.folds import split
    from pipeline.data.transforms import build_transform
    from pipeline.experiments.scoring import need_queries, score, searched_gallery
    from pipeline.model.backbone import create_backbone, input_config
    from pipeline.model.embedder import GeM, PixelNorm
    from pipeline.model.memory_format import layout
    from pipeline.retrieval.embeddings import item_set

    zcfg = dict(cfg, backbone=backbone,  # a weights file belongs to the config's own backbone
                pretrained_file=cfg["pretrained_file"] if backbone == cfg["backbone"] else "")
    ds, train_items, val_items, classes = split(zcfg)
    q_items = ds.test if queries == "test" else val_items
    need_queries(zcfg, queries, [it.image_id for it in q_items], [it.label for it in q_items])
    # seeded so that random weights (pretrained=false) are the same on every call, hence cacheable
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zcfg["seed"])
        model, source = create_backbone(zcfg, with_weights=True)
    if source is None:
        log(f"zero-shot {backbone}: no pretrained weights (pretrained=false), random initialisation")
    size, mean, std = input_config(zcfg, model)
    # batches arrive as uint8 (the Embedder's first step normalises them); create_backbone leaves gem's maps unpooled
    pool = [GeM(zcfg["gem_p"])] if zcfg["pooling"] == "gem" else []
    model = torch.nn.Sequential(PixelNorm(mean, std), model, *pool)
    ident = f"zero-shot|{backbone}|{source}|{zcfg['pooling']}|{zcfg['gem_p']}|{zcfg['seed']}|{mean}|{std}"
    if source and source.startswith("file:"):
        st = Path(source[len("file:"):]).stat()
        ident += f"|{st.st_size}|{st.st_mtime_ns}"
    device = pick_device()
    model.to(device)
    model.to(memory_format=layout(zcfg, model, device, size))
    cache = Path(zcfg["runs_dir"]) / "zero-shot" / backbone.replace("/", "_") / str(size)
    embed = lambda name, items, kind: _embed_cached(model, items, build_transform(kind, zcfg, size),
                                                    zcfg, device, ident, size, cache / f"{name}.npy", log)
    q_name = "query" if queries == "test" else f"val_fold{zcfg['fold']}"
    q = item_set(embed(q_name, q_items, queries), q_items)
    g = None if leave_one_out else item_set(embed("gallery", ds.train, "test"), ds.train)
    g = searched_gallery(g, q, leave_one_out, queries)
    row = {"model": f"zero-shot {backbone}",
           **score(q, g, classes, metrics, ks, leave_one_out, zcfg["max_memory"], log)}
    log(f"evaluated zero-shot {backbone} fold {zcfg['fold']}: {len(q)} queries, {len(g)} gallery images")
    return row


def _embed_cached(model, items, tfm, cfg, device, ident, size, path, log):
    """The embeddings cache for the zero-shot features: recomputed only when the key (weights, image list, transform,
    size) in the .json beside the .npy changes."""
    from pipeline.core.io import load_npy, read_json, save_npy, write_text
    from pipeline.data.transforms import describe
    from pipeline.retrieval.embeddings import cache_key, made_by
    from pipeline.retrieval.forward import EMBEDDING_DTYPE, embed_items

    made = made_by(EMBEDDING_DTYPE, cfg["amp"], device)
    key, meta = cache_key(ident, items, describe(tfm), size, made), path.with_suffix(".json")
    fix = "run the command again (it embeds them anew)"
    if path.is_file() and meta.is_file() and read_json(meta, fix).get("key") == key:
        return load_npy(path, fix, mmap=False, ndim=2)
    emb, _ = embed_items(model, items, tfm, cfg, device)
    save_npy(path, emb)
    write_text(meta, json.dumps({"key": key, "rows": len(emb), "transform": describe(tfm)}, indent=1))
    log(f"embedded zero-shot {path.stem}: {len(emb)} images ({path})")
    return emb
