"""From the models' cached embeddings to class predictions, with the inference tricks of the strongest peers
(their table: inference/registry.py)."""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipeline.config import config_names, run_names
from pipeline.errors import UserError
from pipeline.inference.registry import DEFAULTS
from pipeline.retrieval.embeddings import SPLITS, EmbeddingSet, Variant


@dataclass
class RunSetEmbeddings:
    """The cached embeddings of several runs on the same images, one EmbeddingSet per split (one array per run)."""
    names: list
    gallery: EmbeddingSet
    val: EmbeddingSet
    test: EmbeddingSet

    @cached_property
    def val_gallery(self) -> EmbeddingSet:
        """The training images without the validation rows (a copy), so a validation query never finds itself."""
        return self.gallery.without(self.val.ids)


def load_embeddings(cfgs: list, tricks: dict, log=print) -> RunSetEmbeddings:
    """Each run's gallery / val / test embeddings of the variant the tricks ask for (computed where stale), checked
    to list the same images."""
    from pipeline.retrieval.embeddings import ensure_embeddings

    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    return _combine(names, [ensure_embeddings(c, Variant.of(tricks), log=log) for c in cfgs], SPLITS)


def _combine(names, runs, splits) -> RunSetEmbeddings:
    """One EmbeddingSet per split of the runs (RunEmbeddings), one array per run; a split not in splits is empty."""
    out = {}
    for split in SPLITS:
        loaded = [r.load(split) for r in runs] if split in splits else [EmbeddingSet([], [], [])]
        if any(x.ids != loaded[0].ids for x in loaded[1:]):
            raise UserError(f"the models' {split} embeddings list different images: re-embed them on the same data")
        out[split] = EmbeddingSet([a for x in loaded for a in x.arrays], loaded[0].ids, loaded[0].labels)
    return RunSetEmbeddings(names, **out)


@dataclass
class FoldSets:
    """Runs of the same configs on one or more folds (retrieval on fold models): per fold its runs (one per config,
    in config order) with that fold's validation images, and every run (in the order given) with the gallery (all
    training images) and test images, the same for every fold, to rank the test images with all fold models."""
    configs: list  # config names
    folds: dict  # fold -> RunSetEmbeddings
    every: RunSetEmbeddings

    def need_val(self, cfg: dict) -> None:
        for fold, inputs in self.folds.items():  # every fold must have validation images to be scored
            need_val(inputs.val.ids, dict(cfg, fold=fold))


def load_fold_sets(cfgs: list, tricks: dict, log=print) -> FoldSets:
    """The cached embeddings of runs of configs on folds (each config on the same folds), computed where stale."""
    from pipeline.retrieval.embeddings import ensure_embeddings

    names = run_names(cfgs)
    runs = [ensure_embeddings(c, Variant.of(tricks), log=log) for c in cfgs]
    configs = config_names(cfgs)
    groups = {}
    for i, c in enumerate(cfgs):
        groups.setdefault(c["fold"], []).append(i)
    for fold, group in groups.items():
        if [cfgs[i]["name"] for i in group] != configs:
            raise UserError(f"fold {fold} has runs of {' '.join(cfgs[i]['name'] for i in group)}: give every config "
                            f"({' '.join(configs)}) on the same folds")
    folds = {f: _combine([names[i] for i in g], [runs[i] for i in g], SPLITS) for f, g in groups.items()}
    every = next(iter(folds.values())) if len(folds) == 1 else _combine(names, runs, ("gallery", "test"))
    return FoldSets(configs, folds, every)


def every_run_tricks(tricks: dict, cfgs: list) -> dict:
    """The tricks for ranking with every run of cfgs at once: --weights holds one weight per config, given to each
    of its fold models."""
    if tricks["weights"] is None:
        return tricks
    configs = config_names(cfgs)
    return dict(tricks, weights=[tricks["weights"][configs.index(c["name"])] for c in cfgs])


def encode(labels, classes) -> np.ndarray:
    """Class codes (positions in `classes`) of labels."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[x] for x in labels], dtype=np.int64)


def predict(queries: list, gallery: EmbeddingSet, classes: list, tricks: dict = DEFAULTS, max_memory: int = 2 << 30,
            log=print, models=None, search=None) -> list:
    """Top-5 class names per query with the ranking-time tricks. queries: one array per model (of gallery's
    models); models: indices of the models to use (default all); search: rank()'s (None: exact)."""
    from pipeline.retrieval.tricks import predict as predict_codes

    models = range(len(queries)) if models is None else models
    w = tricks["weights"]
    codes, _ = predict_codes([queries[m] for m in models], [gallery.arrays[m] for m in models],
                             encode(gallery.labels, classes), k=5,
                             weights=None if w is None else [w[m] for m in models], pca_dim=tricks["pca"],
                             whiten=tricks["whiten"], dba=tricks["dba"], qe=tricks["qe"], agg=tricks["agg"],
                             agg_k=tricks["agg_k"], max_memory=max_memory, log=log, search=search)
    return [[classes[c] for c in row if c >= 0] for row in codes]


def map5(queries: EmbeddingSet, gallery: EmbeddingSet, classes: list, tricks: dict = DEFAULTS,
         max_memory: int = 2 << 30, log=print, models=None, search=None) -> float:
    """MAP@5 of labelled queries against a gallery (summed cosines of the models, per-class max by default)."""
    from pipeline.retrieval.metrics import map_at_k

    preds = predict([np.asarray(a) for a in queries.arrays], gallery, classes, tricks, max_memory, log, models, search)
    return map_at_k(preds, list(queries.labels), k=5)


def need_val(val_ids: list, cfg: dict) -> None:
    """A UserError when the config's fold has no validation images."""
    if not val_ids:
        raise UserError(f"fold {cfg['fold']} has no validation images in {cfg['data']}: pick another --fold "
                        f"(see {cfg['folds_file']})")


def val_map5(inputs: RunSetEmbeddings, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> float:
    """Validation MAP@5 (queries: the validation images; gallery: val_gallery) of the models (indices; all)."""
    return map5(inputs.val, inputs.val_gallery, classes, tricks, max_memory, log, models)


def oof_map5(sets: FoldSets, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> tuple:
    """Out-of-fold MAP@5: each fold's validation images ranked by that fold's runs (models: config indices; all)
    against its val_gallery, pooled over every validated image (MAP is a mean over queries: folds count by their
    sizes). Returns ({fold: (MAP@5, queries)}, the pooled MAP@5)."""
    from pipeline.retrieval.metrics import map_at_k

    preds, truth, per_fold = [], [], {}
    for fold, inputs in sets.folds.items():
        p = predict([np.asarray(a) for a in inputs.val.arrays], inputs.val_gallery, classes, tricks, max_memory, log,
                    models)
        per_fold[fold] = (map_at_k(p, list(inputs.val.labels), k=5), len(p))
        preds += p
        truth += list(inputs.val.labels)
    return per_fold, map_at_k(preds, truth, k=5)
