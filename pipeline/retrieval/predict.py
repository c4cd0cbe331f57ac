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
    centers: list | None = None  # per run its ClassCenters (a memmap; None: a pair head), for knn_alpha < 1

    @cached_property
    def val_gallery(self) -> EmbeddingSet:
        """The training images without the validation rows (a copy), so a validation query never finds itself."""
        return self.gallery.without(self.val.ids)


def load_embeddings(cfgs: list, tricks: dict, log=print) -> RunSetEmbeddings:
    """Each run's gallery / val / test embeddings of the variant the tricks ask for (computed where stale), checked
    to list the same images."""
    names = [c["name"] for c in cfgs]
    if len(set(names)) != len(names):
        raise UserError(f"a config is named twice: {' '.join(names)}")
    return _combine(names, [_ensure(c, tricks, log) for c in cfgs], SPLITS)


def _ensure(cfg, tricks, log):
    """The run's RunEmbeddings of each view the tricks ask for: one, or with rotation TTA one per quarter turn."""
    from pipeline.retrieval.embeddings import ensure_embeddings

    return [ensure_embeddings(cfg, Variant.of(tricks, turn), log=log) for turn in range(4 if tricks["rotate"] else 1)]


def _combine(names, runs, splits) -> RunSetEmbeddings:
    """One EmbeddingSet per split of the runs (each a list of RunEmbeddings, one per view), one array per run, the
    query splits with their turned views; a split not in splits is empty."""
    out = {}
    for split in SPLITS:
        views = []
        for v in range(len(runs[0]) if split != "gallery" else 1):
            loaded = [r[v].load(split) for r in runs] if split in splits else [EmbeddingSet([], [], [])]
            if any(x.ids != loaded[0].ids for x in loaded[1:]):
                raise UserError(f"the models' {split} embeddings list different images: re-embed them on the same "
                                "data")
            views.append(EmbeddingSet([a for x in loaded for a in x.arrays], loaded[0].ids, loaded[0].labels))
        out[split] = views[0]
        out[split].views = views[1:]
    return RunSetEmbeddings(names, **out, centers=[r[0].centers() for r in runs])


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
    names = run_names(cfgs)
    runs = [_ensure(c, tricks, log) for c in cfgs]
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
            log=print, models=None, search=None, views=(), centers=None) -> list:
    """Top-5 class names per query with the ranking-time tricks. queries: one array per model (of gallery's
    models); models: indices of the models to use (default all); search: rank()'s (None: exact); views: the same
    queries turned (rotation TTA: one list of arrays per turn), each class scored by its best view; centers: each
    model's ClassCenters (knn_alpha < 1: class scores mix in the cosine to the class weights)."""
    from pipeline.inference.orientation import merge_rotations

    models = list(range(len(queries)) if models is None else models)
    rank_view = _ranker(gallery, classes, tricks, max_memory, log, models, search, centers)
    ranked = [rank_view([np.asarray(v[m]) for m in models]) for v in [queries, *views]]
    codes = ranked[0][0] if len(ranked) == 1 else merge_rotations([c for c, _ in ranked], [s for _, s in ranked], 5)[0]
    return [[classes[c] for c in row if c >= 0] for row in codes]


def _ranker(gallery, classes, tricks, max_memory, log, models, search, centers):
    """The function from one view of the queries (the models' arrays) to its (codes, scores) with the ranking-time
    tricks; what every view shares (gallery codes, the kept class centers) is prepared once."""
    from pipeline.inference.logits import logit_knn_rank
    from pipeline.retrieval.tricks import predict as predict_codes

    w = None if tricks["weights"] is None else [tricks["weights"][m] for m in models]
    gs, codes = [gallery.arrays[m] for m in models], encode(gallery.labels, classes)
    kw = dict(k=5, weights=w, agg=tricks["agg"], agg_k=tricks["agg_k"], max_memory=max_memory, log=log, search=search)
    if tricks["knn_alpha"] >= 1:
        return lambda qs: predict_codes(qs, gs, codes, pca_dim=tricks["pca"], whiten=tricks["whiten"],
                                        dba=tricks["dba"], qe=tricks["qe"], **kw)
    if tricks["pca"] or tricks["dba"][0] or tricks["qe"][0]:
        raise UserError("--knn-alpha below 1 ranks the models' own embeddings: use it without --pca, --dba and --qe")
    if centers is None or any(centers[m] is None for m in models):
        raise UserError("--knn-alpha below 1 needs classifier heads (arcface, cosface, subcenter_arcface): a pair "
                        "head (supcon, triplet) has no class weights; leave --knn-alpha at 1 for it")
    index = {c: i for i, c in enumerate(classes)}
    keep = [np.array([lab in index for lab in centers[m].labels]) for m in models]
    arrays = [np.asarray(centers[m].array)[k] for m, k in zip(models, keep)]
    center_codes = [encode([lab for lab, on in zip(centers[m].labels, k) if on], classes) for m, k in zip(models, keep)]
    return lambda qs: logit_knn_rank(qs, gs, codes, arrays, center_codes, tricks["knn_alpha"], **kw)


def map5(queries: EmbeddingSet, gallery: EmbeddingSet, classes: list, tricks: dict = DEFAULTS,
         max_memory: int = 2 << 30, log=print, models=None, search=None, centers=None) -> float:
    """MAP@5 of labelled queries (with their turned views, if any) against a gallery (summed cosines of the models,
    per-class max by default)."""
    from pipeline.retrieval.metrics import map_at_k

    preds = predict([np.asarray(a) for a in queries.arrays], gallery, classes, tricks, max_memory, log, models, search,
                    [v.arrays for v in queries.views], centers)
    return map_at_k(preds, list(queries.labels), k=5)


def need_val(val_ids: list, cfg: dict) -> None:
    """A UserError when the config's fold has no validation images."""
    if not val_ids:
        raise UserError(f"fold {cfg['fold']} has no validation images in {cfg['data']}: pick another --fold "
                        f"(see {cfg['folds_file']})")


def val_map5(inputs: RunSetEmbeddings, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> float:
    """Validation MAP@5 (queries: the validation images; gallery: val_gallery) of the models (indices; all)."""
    return map5(inputs.val, inputs.val_gallery, classes, tricks, max_memory, log, models, centers=inputs.centers)


def oof_predictions(sets: FoldSets, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> tuple:
    """Each fold's validation images ranked by that fold's runs (models: config indices; all) against its
    val_gallery: ({fold: (its predictions, its labels)}, every validated image id in the same order)."""
    out, ids = {}, []
    for fold, inputs in sets.folds.items():
        p = predict([np.asarray(a) for a in inputs.val.arrays], inputs.val_gallery, classes, tricks, max_memory, log,
                    models, views=[v.arrays for v in inputs.val.views], centers=inputs.centers)
        out[fold] = (p, list(inputs.val.labels))
        ids += list(inputs.val.ids)
    return out, ids


def oof_map5(sets: FoldSets, classes: list, tricks: dict, max_memory: int, log=print, models=None) -> tuple:
    """Out-of-fold MAP@5 (oof_predictions), pooled over every validated image (MAP is a mean over queries: folds
    count by their sizes). Returns ({fold: (MAP@5, queries)}, the pooled MAP@5, the pooled class-balanced MAP@5)."""
    from pipeline.retrieval.metrics import map_at_k

    per_fold, _ = oof_predictions(sets, classes, tricks, max_memory, log, models)
    preds = [p for ps, _ in per_fold.values() for p in ps]
    truth = [t for _, ts in per_fold.values() for t in ts]
    return ({f: (map_at_k(ps, ts, k=5), len(ps)) for f, (ps, ts) in per_fold.items()}, map_at_k(preds, truth, k=5),
            map_at_k(preds, truth, k=5, balanced=True))
