"""The embedding cache of a trained run: runs/<config>/fold<k>/embeddings/<stem>.npy (float16, one L2-normalised
row per image), <stem>.csv (image_id,label in row order; label empty for test), manifest.json (each stem's cache
key) and centers.npy/.csv (a classifier head's class centers). Splits: the gallery (all training images), the
validation fold and the test images; an embedding-time `Variant` (e.g. val.flip.mc5) has its own stems. A stem is
recomputed only when its key changes: the checkpoint's content hash, the image list (path, size, mtime), the
transform (with the variant), the image size, and what made the rows (dtype, AMP, device kind). It is embedded in
chunks of whole batches (embed_chunk images) saved under <stem>.parts/ with their key and batching, so a killed
embed resumes from its finished chunks; they are the one-process batches with their own seeds, so <stem>.npy,
their concatenation, is byte for byte what one uninterrupted pass writes; the parts go once it is written."""
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.errors import UserError
from pipeline.core.io import take_rows
from pipeline.retrieval.embedding_tricks import EMBEDDING_TRICKS, SPLITS

if TYPE_CHECKING:
    import albumentations as A
    import torch

    from pipeline.data.image_cache import ImageReader
    from pipeline.data.layouts import Item
    from pipeline.data.transforms import MultiCrop
    from pipeline.model.embedder import Embedder
    from pipeline.retrieval.centers import ClassCenters
    from pipeline.retrieval.orientation import Orienter

VERSION = 1  # bump when the embedding code changes what it computes


@dataclass(frozen=True)
class Variant:
    """How a run's embeddings are made: one field per embedding-time trick (retrieval/embedding_tricks.py, which
    says what each adds to the file stem, the cache key and the manifest): flip TTA, multi-crop queries (0, 5 or 9
    crops), the gallery's pipeline (test, or val: with the simulated red hole); for the queries only: the red
    occlusion filled before resizing, the view turned `rotation` quarter turns (rotation TTA: a variant per turn)
    or upright by the run's rotation classifier; multi-scale TTA, the queries' scales and the gallery's. The default
    is the plain gallery / val / test."""
    flip: bool = False
    multicrop: int = 0
    gallery_pipeline: str = "test"
    fill: str = "none"
    rotation: int = 0
    upright: bool = False
    scales: tuple = ()
    gallery_scales: tuple = ()

    @classmethod
    def of(cls, tricks: dict, rotation: int = 0) -> "Variant":
        """The variant an inference-tricks dict asks for (with rotation TTA: the one of that many turns)."""
        return cls(**{k: tricks[k] for k in EMBEDDING_TRICKS if k in tricks}, rotation=rotation).checked()

    def checked(self) -> "Variant":
        """Itself with plain types; a value that is not allowed is a one-line UserError naming it."""
        return Variant(**{k: t.check(getattr(self, k)) for k, t in EMBEDDING_TRICKS.items()})

    def query(self, split: str) -> "Variant":
        """What of it applies to split: each trick off where it does not apply."""
        return Variant(**{k: getattr(self, k) if split in t.splits else t.default
                          for k, t in EMBEDDING_TRICKS.items()})

    def pipeline(self, split: str) -> str:
        """The transform pipeline of a split: val for the validation queries (and a val-pipeline gallery), else test."""
        return "val" if split == "val" or self.query(split).gallery_pipeline == "val" else "test"

    def crops(self, split: str) -> int:
        return self.query(split).multicrop

    def sizes(self, split: str, size: int) -> list[int]:
        """The input sides a split is embedded at: the run's size, or each of its scales' (multi-scale TTA), rounded
        to a multiple of 8 as backbones' strides like."""
        q = self.query(split)
        return [max(8, round(size * s / 8) * 8) for s in q.scales or q.gallery_scales] or [size]

    def stem(self, split: str) -> str:
        """File stem of a split's embeddings; the default variant gives the plain split name."""
        q = self.query(split)
        return split + "".join(t.stem(getattr(q, k)) for k, t in EMBEDDING_TRICKS.items())

    def transform(self, split: str, cfg: dict, meta: dict):
        """(transform, its cache-key text) of one split; meta: a checkpoint (or the kernel's model meta) with
        image_size, mean, std. Shared by embed and the Kaggle kernel."""
        from pipeline.data.transforms import MultiCrop, build_transform, describe

        size, q = meta["image_size"], self.query(split)
        kind, crops = self.pipeline(split), q.multicrop
        tfm = MultiCrop(kind, crops, size, cfg, q.fill) if crops else build_transform(kind, cfg, size, q.fill)
        # the key text of a default stem is exactly the transform's, so existing caches stay valid
        return tfm, describe(tfm) + "".join(t.key(getattr(q, k)) for k, t in EMBEDDING_TRICKS.items())

    def manifest(self, split: str) -> dict:
        """What a manifest entry records of the variant (nothing for a plain split)."""
        q = self.query(split)
        fields = {t.manifest: getattr(q, k) for k, t in EMBEDDING_TRICKS.items()}
        return {} if self.stem(split) == split else {"split": split, **fields, "pipeline": self.pipeline(split)}


@dataclass
class EmbeddingSet:
    """Embeddings of one list of images: one (n, E_m) float16 array per model (a read-only memmap when loaded from
    the cache), the image ids and labels in row order (labels '' for test images read from the cache, None for
    unlabelled items given to item_set)."""
    arrays: list
    ids: list
    labels: list
    views: list = field(default_factory=list)  # queries: the EmbeddingSets of their other turns (rotation TTA)

    @property
    def array(self) -> np.ndarray:
        """The single model's array."""
        if len(self.arrays) != 1:
            raise ValueError(f"EmbeddingSet of {len(self.arrays)} models has no single array")
        return self.arrays[0]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, keep: np.ndarray) -> "EmbeddingSet":
        """A copy of the rows where the boolean mask `keep` is true (of a memmap: on disk, core/io.take_rows)."""
        return EmbeddingSet([take_rows(a, keep) for a in self.arrays], [i for i, k in zip(self.ids, keep) if k],
                            [lab for lab, k in zip(self.labels, keep) if k])

    def without(self, ids) -> "EmbeddingSet":
        """A copy without the rows of these image ids."""
        drop = set(ids)
        return self.rows(np.array([i not in drop for i in self.ids], bool))


@dataclass
class RunEmbeddings:
    """The cache of one run under one variant: its folder, the stem of each split, the stems this call computed."""
    dir: Path
    stems: dict
    computed: list

    def load(self, split: str) -> EmbeddingSet:
        return load_split(self.dir, self.stems[split])

    def centers(self) -> "ClassCenters | None":
        """The run's class centers (a classifier head's), None for a pair head."""
        from pipeline.retrieval.centers import CENTERS, load_centers

        return load_centers(self.dir / CENTERS) if (self.dir / f"{CENTERS}.npy").is_file() else None


def item_set(array, items) -> EmbeddingSet:
    """A one-model EmbeddingSet of freshly embedded items."""
    return EmbeddingSet([array], [it.image_id for it in items], [it.label for it in items])


def made_by(dtype, amp: bool, device: str) -> str:
    """Cache-key text of what made the rows besides weights and images: the stored dtype, whether AMP ran (on CUDA
    only; the CPU always runs fp32) and the device kind, so CUDA-made rows are never taken for CPU ones."""
    kind = device.split(":")[0]
    return f"rows {np.dtype(dtype).name}|amp {bool(amp) and kind == 'cuda'}|{kind}"


def cache_key(ident: str, items, transform_text: str, size: int, made: str = "") -> str:
    """sha256 over what makes the embeddings: the weights' identity, the image list (id, path, size, mtime), the
    transform's text, the image size and `made` (made_by's text)."""
    h = hashlib.sha256(f"v{VERSION}|{ident}|{transform_text}|{size}|{made}".encode())
    for it in items:
        st = it.path.stat()
        h.update(f"|{it.image_id}|{it.path}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def ensure_embeddings(cfg: dict, variant: Variant = Variant(), log=print) -> RunEmbeddings:
    """Compute the stems of the run's splits whose cache is stale, resuming from the chunks a killed run kept
    (under torchrun each rank its share of each chunk; rank 0 writes). Only the embeddings: the rotation classifier
    an upright variant needs and the class centers are runsets.prepare_run's other steps."""
    from pipeline.config import run_dir
    from pipeline.core import checkpoint, distributed
    from pipeline.core.device import pick_device
    from pipeline.data import decode
    from pipeline.data.folds import gallery_items, split
    from pipeline.data.image_cache import ImageReader, image_reader, short_side
    from pipeline.retrieval.forward import EMBEDDING_DTYPE, chunking, embed_in_chunks

    variant = variant.checked()
    log = distributed.main_only(log)  # rank 0 reports and writes; the others compute their shares
    run, ck_path = run_dir(cfg), run_checkpoint(cfg)
    ck_hash = checkpoint.file_hash(ck_path)
    ds, _, val_items, _ = split(cfg)
    test_by_id = {it.image_id: it for it in ds.test}
    items = {"gallery": gallery_items(ds), "val": val_items, "test": [test_by_id[i] for i in ds.test_ids]}
    stems = {name: variant.stem(name) for name in SPLITS}
    out = run / "embeddings"
    manifest = read_manifest(out)
    state, model, reader, orient, device, computed = None, None, None, None, pick_device(cfg["device"], log), []
    made = made_by(EMBEDDING_DTYPE, cfg["amp"], device)
    for name in SPLITS:
        state = state or checkpoint.load(ck_path, cfg)
        size = state["image_size"]
        reader = reader or ImageReader(short_side(cfg, size))  # the cache itself is opened (built) only if needed
        tfm, text = variant.transform(name, cfg, state)
        text += reader.describe() + decode.describe(cfg, tfm, reader)  # decode=gpu's pixels differ by a level
        key = cache_key(ck_hash, items[name], text, size, made)
        st, parts = stems[name], out / f"{stems[name]}.parts"
        if manifest.get(st, {}).get("key") == key and _intact(out, st, manifest[st]):
            shutil.rmtree(parts, ignore_errors=True)  # left by a kill between the manifest and their removal
            continue
        if model is None:
            model = load_model(state["config"], state["model"], cfg, device, size)
            reader = image_reader(cfg, size, {"train": ds.train, "test": ds.test}, log)
        q = variant.query(name)
        if q.upright and orient is None:
            orient = _orienter(model, run, ck_hash, device, log)
        t0, crops = time.time(), variant.crops(name)
        meta = {"key": key, **chunking(cfg, crops, len(items[name]))}
        view = {"reader": reader, "rotation": q.rotation, "orient": orient if q.upright else None}
        emb = embed_in_chunks(partial(embed_variant, model, items[name], variant, name, cfg, state, device, **view),
                              meta, parts, log, f"{cfg['name']} {st}")
        computed.append(st)
        if emb is None:  # another rank's share: rank 0 has it now
            continue
        _save_stem(out, st, emb, items[name], manifest, {
            "key": key, "rows": len(emb), "dim": int(emb.shape[1]) if emb.size else 0, "checkpoint": str(ck_path),
            "checkpoint_sha256": ck_hash, "image_size": size, "transform": text, "made": made,
            **variant.manifest(name)})
        log(f"embedded {cfg['name']} {st}: {len(emb)} images in {time.time() - t0:.1f}s")
    if not computed:
        which = "" if list(stems.values()) == list(SPLITS) else f" ({', '.join(stems.values())})"
        log(f"embeddings of {cfg['name']} fold {cfg['fold']}{which} are up to date ({out})")
    return RunEmbeddings(out, stems, computed)


def run_checkpoint(cfg: dict) -> Path:
    """The checkpoint a run's embeddings, class centers and rotation classifier come from; a UserError when it has
    not been trained."""
    from pipeline.config import run_dir

    path = run_dir(cfg) / f"{cfg['checkpoint']}.pt"
    if not path.is_file():
        raise UserError(f"{path} not found: train first (./run.sh train {cfg['name']} --fold {cfg['fold']})")
    return path


def read_manifest(out: Path) -> dict:
    """embeddings/manifest.json: each stem's cache entry (empty before the first embed); a damaged one is a
    UserError saying so."""
    from pipeline.core.io import damaged, read_json

    path = out / "manifest.json"
    if not path.is_file():
        return {}
    manifest = read_json(path, refill(out))
    bad = next((k for k, v in manifest.items() if not isinstance(v, dict)), None)
    if bad is not None:
        raise damaged(path, f"entry {bad!r} is not a mapping", refill(out))
    return manifest


def refill(out: Path) -> str:
    """The fix for a damaged file of a run's embedding cache (<runs_dir>/<config>/fold<k>/embeddings)."""
    return f"re-embed: ./run.sh embed {out.parent.parent.name} --fold {out.parent.name.removeprefix('fold')}"


def _intact(out: Path, stem: str, entry: dict) -> bool:
    """Whether a stem's files are there; a .npy that is damaged or holds other than its manifest entry's rows is a
    UserError (its key would otherwise vouch for it)."""
    from pipeline.core.io import damaged, load_npy

    path = out / f"{stem}.npy"
    if not (path.is_file() and (out / f"{stem}.csv").is_file()):
        return False
    rows = len(load_npy(path, refill(out), ndim=2))
    if rows != entry.get("rows", rows):
        raise damaged(path, f"{rows} rows, its manifest entry says {entry['rows']}", refill(out))
    return True


def _orienter(model, run, ck_hash, device, log):
    """The run's rotation classifier for upright queries, trained before (runsets.prepare_run)."""
    from pipeline.retrieval.orientation import FILE, load_orienter

    orient = load_orienter(model, run, ck_hash, device, log)
    if orient is None:
        raise UserError(f"{run / FILE}: no rotation classifier for this checkpoint; upright queries need it first "
                        "(pipeline.retrieval.runsets.prepare_run trains it)")
    return orient


def _save_stem(out: Path, stem: str, emb: np.ndarray, items: "list[Item]", manifest: dict, entry: dict) -> None:
    """Write a stem's .npy and .csv, then its manifest entry (which vouches for them), then drop its chunks."""
    import pandas as pd

    from pipeline.core.io import save_npy, write_table, write_text

    save_npy(out / f"{stem}.npy", emb)
    write_table(out / f"{stem}.csv", pd.DataFrame({"image_id": [i.image_id for i in items],
                                                   "label": [i.label or "" for i in items]}))
    manifest[stem] = entry
    write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    shutil.rmtree(out / f"{stem}.parts", ignore_errors=True)


def load_model(model_cfg: dict, state_dict: "dict[str, torch.Tensor]", cfg: dict, device: str,
               size: int) -> "Embedder":
    """The embedding model of a run (built without pretrained weights, then given its trained ones), on device in
    the memory format cfg's channels_last gives it at this image size."""
    from pipeline.model.embedder import build_model
    from pipeline.model.memory_format import layout

    model, _ = build_model(model_cfg, with_weights=False)
    model.load_state_dict(state_dict)
    model.to(device)
    return model.to(memory_format=layout(cfg, model, device, size))


def embed_with(model: "torch.nn.Module", items: "list[Item]", tfm: "A.Compose | MultiCrop", crops: int, cfg: dict,
               device: str, flip: bool = False, start: int = 0, stop: int | None = None,
               reader: "ImageReader | None" = None, rotation: int = 0,
               orient: "Orienter | None" = None, progress=None) -> np.ndarray | None:
    """float16 (n, E) embeddings of items[start:stop] (start a multiple of forward.images_per_batch): plain, or the
    multi-crop mean when crops > 0 (None on ranks but 0); rotation / orient / progress: forward.embed_items'."""
    from pipeline.retrieval.forward import embed_items, embed_multicrop

    kw = dict(flip=flip, start=start, stop=stop, reader=reader, rotation=rotation, orient=orient, progress=progress)
    if crops:
        return embed_multicrop(model, items, tfm, cfg, device, **kw)
    return embed_items(model, items, tfm, cfg, device, **kw)[0]


def embed_variant(model: "torch.nn.Module", items: "list[Item]", variant: Variant, split: str, cfg: dict, meta: dict,
                  device: str, start: int = 0, stop: int | None = None, reader: "ImageReader | None" = None,
                  rotation: int = 0, orient: "Orienter | None" = None, progress=None) -> np.ndarray | None:
    """float16 embeddings of a split's items[start:stop] as `variant` makes them (embed_with: flip, crops, the
    view); with multi-scale TTA at each of variant.sizes(split, ...) and the L2-normalised mean of the (unit) rows.
    meta: what the model is fed (a checkpoint's or the kernel's image_size, mean, std). None on ranks but 0 (each
    scale is a collective pass: every rank makes all of them). progress counts the last scale's images only."""
    sizes = variant.sizes(split, meta["image_size"])
    each = [embed_with(model, items, variant.transform(split, cfg, {**meta, "image_size": size})[0],
                       variant.crops(split), cfg, device, variant.flip, start=start, stop=stop, reader=reader,
                       rotation=rotation, orient=orient, progress=progress if i == len(sizes) - 1 else None)
            for i, size in enumerate(sizes)]
    if each[0] is None or len(each) == 1:
        return each[0]
    mean = np.mean([e.astype(np.float32) for e in each], axis=0)
    return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(each[0].dtype)


def load_split(emb_dir: Path, stem: str, fix: str | None = None) -> EmbeddingSet:
    """The cached embeddings of one stem (a split name, or RunEmbeddings.stems[split]) as a one-model EmbeddingSet
    (a float16 memmap); each stem has its own .npy and .csv, written together."""
    from pipeline.core.io import damaged, load_npy, read_table

    path = Path(emb_dir) / f"{stem}.npy"
    if not path.is_file():
        raise UserError(f"{path} not found: run ./run.sh embed first")
    fix = fix or refill(Path(emb_dir))  # fix: how to remake a damaged file (a run's cache: re-embed)
    rows = read_table(Path(emb_dir) / f"{stem}.csv", required=["image_id", "label"], ours=fix)
    emb = load_npy(path, fix, ndim=2)
    if len(rows) != len(emb):
        raise damaged(path, f"{len(emb)} rows but {stem}.csv has {len(rows)}", fix)
    return EmbeddingSet([emb], rows["image_id"].tolist(), rows["label"].tolist())
