"""From the models' cached embeddings to class predictions, with the inference tricks of the strongest peers.

TRICKS is the table of inference tricks: each entry holds the keys it owns in a tricks dict (with their defaults),
its command-line flags, the check that turns parsed flags into its values, when it acts, and its rows in
`evaluate --ablate`. Embedding-time tricks (flip TTA, multi-crop queries, the gallery's pipeline) choose which
cached embeddings are loaded (retrieval/embeddings.py: Variant); ranking-time ones (weights, PCA, DBA, QE,
per-class aggregation) go to retrieval/tricks.py's predict. A new trick = its function + one TRICKS entry."""
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np

from pipeline.config import config_names, run_names
from pipeline.errors import UserError
from pipeline.retrieval.embeddings import SPLITS, EmbeddingSet, Variant


@dataclass(frozen=True)
class Trick:
    """One inference trick. `defaults`: the tricks-dict keys it owns (off values); `add_flags(group)` adds its
    options; `parse(args, n_models)` returns its checked values; `ablations`: (row label, values) rows that
    evaluate --ablate scores alone on top of the baseline; `from_json` undoes what JSON did to a saved value."""
    defaults: dict
    stage: str  # "embedding" | "ranking"
    add_flags: Callable
    parse: Callable
    ablations: tuple = ()
    from_json: dict = field(default_factory=dict)  # key -> function of the saved value


def _k_alpha(flag, text):
    if not text:
        return (0, 3.0)
    parts = text.split(",")
    try:
        k, alpha = int(parts[0]), float(parts[1]) if len(parts) > 1 else 3.0
    except ValueError:
        k = alpha = -1
    if len(parts) > 2 or k < 0 or alpha < 0:
        raise UserError(f"{flag} '{text}': give K[,ALPHA] with K >= 0 and ALPHA >= 0, e.g. {flag} 5,3")
    return (k, alpha)


def _parse_agg(args, n):
    if args.agg_k < 1:
        raise UserError(f"--agg-k {args.agg_k}: must be >= 1")
    return {"agg": args.agg, "agg_k": args.agg_k}


def _parse_pca(args, n):
    if args.pca < 0:
        raise UserError(f"--pca {args.pca}: give a dimension > 0, or 0 for off")
    if args.whiten and not args.pca:
        raise UserError("--whiten needs --pca DIM")
    return {"pca": args.pca, "whiten": args.whiten}


def _parse_weights(args, n):
    if not args.weights:
        return {"weights": None}
    try:
        weights = [float(x) for x in args.weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
        raise UserError(f"--weights '{args.weights}': give {n} non-negative numbers (one per model, not all zero), "
                        "e.g. --weights " + ",".join(["1"] * n))
    return {"weights": weights}


def _flag(*names, **kw):
    return lambda g: g.add_argument(*names, **kw)


def _flags(*adders):
    return lambda g: [add(g) for add in adders]


# The PCA rows' dimension (-1) is picked from the data by the ablation (experiments/ablate.py).
TRICKS = {
    "flip": Trick(
        {"flip": False}, "embedding",
        _flag("--flip", action="store_true", help="flip TTA: queries and gallery embed x and its mirror"),
        lambda a, n: {"flip": a.flip},
        (("flip TTA", {"flip": True}),)),
    "multicrop": Trick(
        {"multicrop": 0}, "embedding",
        _flag("--multicrop", type=int, default=0, choices=[0, 5, 9],
              help="queries as the mean of 5 or 9 crops, crops > 50%% red dropped (SPEC 2, Appendix D)"),
        lambda a, n: {"multicrop": a.multicrop},
        (("multi-crop 5 (red crops dropped)", {"multicrop": 5}),
         ("multi-crop 9 (red crops dropped)", {"multicrop": 9}))),
    "gallery_pipeline": Trick(
        {"gallery_pipeline": "test"}, "embedding",
        _flag("--gallery-pipeline", default="test", choices=["test", "val"],
              help="transforms the gallery is embedded with (SPEC Table 3; default test)"),
        lambda a, n: {"gallery_pipeline": a.gallery_pipeline},
        (("gallery with the val pipeline", {"gallery_pipeline": "val"}),)),
    "agg": Trick(
        {"agg": "max", "agg_k": 3}, "ranking",
        _flags(_flag("--agg", default="max", choices=["max", "sum"],
                     help="class score: max, or sum of the top --agg-k"),
               _flag("--agg-k", type=int, default=3, help="similarities summed per class with --agg sum (default 3)")),
        _parse_agg,
        (("class score = sum of top-3", {"agg": "sum", "agg_k": 3}),)),
    "qe": Trick(
        {"qe": (0, 3.0)}, "ranking",
        _flag("--qe", metavar="K[,ALPHA]", help="label-constrained query expansion, e.g. 5,3"),
        lambda a, n: {"qe": _k_alpha("--qe", a.qe)},
        (("query expansion k=5 α=3", {"qe": (5, 3.0)}),), {"qe": tuple}),
    "dba": Trick(
        {"dba": (0, 3.0)}, "ranking",
        _flag("--dba", metavar="K[,ALPHA]", help="label-constrained database-side augmentation, e.g. 5,3"),
        lambda a, n: {"dba": _k_alpha("--dba", a.dba)},
        (("database augmentation k=5 α=3", {"dba": (5, 3.0)}),), {"dba": tuple}),
    "pca": Trick(
        {"pca": 0, "whiten": False}, "ranking",
        _flags(_flag("--pca", type=int, default=0, metavar="DIM",
                     help="PCA of the concatenated embedding, fitted on the gallery (0 = off)"),
               _flag("--whiten", action="store_true", help="whiten with --pca")),
        _parse_pca,
        (("PCA {dim}", {"pca": -1}), ("PCA {dim} + whitening", {"pca": -1, "whiten": True}))),
    "weights": Trick(
        {"weights": None}, "ranking",
        _flag("--weights", metavar="W1,W2,...", help="per-model weights (default equal)"),
        _parse_weights),
}
DEFAULTS = {k: v for t in TRICKS.values() for k, v in t.defaults.items()}
RANKING_TRICKS = tuple(k for t in TRICKS.values() if t.stage == "ranking" for k in t.defaults)
ABLATIONS = [row for t in TRICKS.values() for row in t.ablations]


def add_trick_arguments(parser) -> None:
    g = parser.add_argument_group("inference tricks (off by default; see evaluate --ablate)")
    for t in TRICKS.values():
        t.add_flags(g)


def tricks_from_args(args, n_models: int) -> dict:
    """The tricks dict of the parsed flags, each checked by its entry."""
    out = {}
    for t in TRICKS.values():
        out.update(t.parse(args, n_models))
    return out


def tricks_from_json(saved: dict) -> dict:
    """A tricks dict read back from JSON (kernel.json, scores.json)."""
    out = dict(saved)
    for t in TRICKS.values():
        for key, fn in t.from_json.items():
            out[key] = fn(out[key])
    return out


def describe(tricks: dict) -> str:
    """Short text of the tricks that differ from the defaults ('none' if none)."""
    on = [f"{k}={v}" for k, v in tricks.items() if v != DEFAULTS[k]]
    return ", ".join(on) or "none"


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
