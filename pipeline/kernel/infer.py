"""Inference inside a Kaggle kernel: embed the test images with every packaged model and rank them against the
cached gallery embeddings with the same code as `./run.sh ensemble` (inference/predict.py), then write and
validate submission.csv. Reads only the models dataset (kernel/spec.py) and the competition folder."""
import importlib.metadata
import json
import time
from pathlib import Path

from pipeline.kernel import spec

VERSIONS = ("torch", "timm", "numpy", "pandas", "albumentations", "opencv-python-headless")  # logged: the image's
# a damaged file of the models dataset was packaged so (or uploaded so): only a new package mends it
REBUILD = "rebuild and upload the package (./run.sh kernel NAME ..., ./run.sh upload NAME)"


def run(models_dir, data_dir, out_csv, t0=None, log=print) -> list:
    """Writes out_csv; returns its validated rows. models_dir: the models dataset (kernel.json at its root)."""
    import yaml
    from safetensors.torch import load_file

    from pipeline.core.device import amp_dtype, cuda_check
    from pipeline.core.progress import Progress
    from pipeline.data.image_cache import ImageReader, short_side
    from pipeline.data.layouts import load_dataset
    from pipeline.inference.predict import predict
    from pipeline.inference.tricks import describe
    from pipeline.retrieval.centers import CENTERS, load_centers
    from pipeline.retrieval.embeddings import EmbeddingSet, Variant, embed_variant, load_model, load_split
    from pipeline.retrieval.orientation import load_orienter
    from pipeline.retrieval.search import Search
    from pipeline.retrieval.submission import write_submission

    t0 = time.time() if t0 is None else t0
    models_dir, data_dir = Path(models_dir), Path(data_dir)
    kernel = spec.KernelSpec.read(models_dir)
    variant = Variant.of(kernel.tricks)
    # checked for real: Kaggle's torch has no kernels for the P100 it may give, though is_available() says True
    check = cuda_check()
    device = "cuda" if check.usable else "cpu"
    on = (f"{check.name} (sm_{''.join(map(str, check.capability))}, {str(amp_dtype(device)).split('.')[1]} autocast)"
          if check.usable else f"the CPU ({check.why})")
    log(f"kernel: {len(kernel.models)} model(s) on {on}; tricks: {describe(kernel.tricks)}")
    log("kernel: " + ", ".join(f"{d} {importlib.metadata.version(d)}" for d in VERSIONS))
    views, centers, gallery, ds, timings = [[] for _ in range(4 if kernel.tricks["rotate"] else 1)], [], None, None, {}
    for name in kernel.models:
        t = time.time()
        mdir = models_dir / name
        cfg = yaml.safe_load((mdir / spec.CONFIG).read_text())
        train_cfg = yaml.safe_load((mdir / spec.TRAIN_CONFIG).read_text())
        meta = json.loads((mdir / spec.META).read_text())
        cfg["data"] = str(data_dir)
        if ds is None:
            search = Search.of(cfg)  # the first model's config, as ensemble ranks with its first run's
            ds = load_dataset(data_dir, cfg)
            by_id = {it.image_id: it for it in ds.test}
            items = [by_id[i] for i in ds.test_ids]
            log(f"kernel: {len(items)} test images, {len(ds.classes)} classes in {data_dir}")
        model = load_model(train_cfg, load_file(str(mdir / spec.WEIGHTS)), cfg, device, meta["image_size"])
        # image_scale as the gallery was embedded with; no image cache here: each test photo is read once
        reader = ImageReader(short_side(cfg, meta["image_size"]))
        # packaged for this checkpoint, so it is loaded, never trained here
        orient = load_orienter(model, mdir, meta["checkpoint_sha256"], device, log) if variant.upright else None
        if variant.upright and orient is None:
            raise SystemExit(f"kernel: {mdir} has no rotation classifier for its checkpoint: package it again")
        # Kaggle's log is no terminal: a line every 30 s and a last one
        bar = Progress(len(items) * len(views), f"kernel: embedding {name} test"
                       + (f" ({len(views)} turns)" if len(views) > 1 else ""), log=log)
        for turn in range(len(views)):  # rotation TTA: each quarter turn of the queries is a view
            views[turn].append(embed_variant(model, items, variant, "test", cfg, meta, device, reader=reader,
                                             rotation=turn, orient=orient, progress=bar))
        centers.append(load_centers(mdir / CENTERS, REBUILD) if kernel.tricks["knn_alpha"] < 1 else None)
        del model
        g = load_split(mdir, kernel.gallery_stem, REBUILD)
        if gallery is not None and g.labels != gallery.labels:
            raise SystemExit(f"kernel: {mdir / kernel.gallery_stem}.csv lists other gallery images than the first "
                             "model's")
        gallery = g if gallery is None else EmbeddingSet(gallery.arrays + g.arrays, g.ids, g.labels)
        timings[name] = time.time() - t
        left = len(kernel.models) - len(timings)
        eta = f"; {left} model(s) left, about {sum(timings.values()) / len(timings) * left:.0f}s more" if left else ""
        log(f"kernel: {name}: embedded {len(items)} test images in {timings[name]:.1f}s "
            f"({len(items) / max(timings[name], 1e-9):.1f} img/s){eta}")
    t = time.time()
    preds = predict(views[0], gallery, ds.classes, kernel.tricks, kernel.max_memory, log, search=search,
                    views=views[1:], centers=centers)
    timings["rank"] = time.time() - t
    rows = write_submission(out_csv, [it.image_id for it in items], preds, expected_ids=ds.test_ids,
                            known_classes=ds.classes, id_column=ds.id_column, label_column=ds.label_column)
    log(f"kernel: ranked in {timings['rank']:.1f}s; wrote and validated {out_csv} ({len(rows)} rows); "
        f"total {time.time() - t0:.1f}s")
    return rows
