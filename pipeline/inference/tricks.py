"""The inference-trick table. Each TRICKS entry holds the keys it owns in a tricks dict (with their defaults),
its command-line flags, the check that turns parsed flags into its values, when it acts, and its rows in
`evaluate --ablate`. Embedding-time tricks (flip TTA, multi-crop queries, the gallery's pipeline, the occlusion
fill, rotation, upright queries, multi-scale) choose which cached embeddings are loaded: what each adds to a
Variant's files is its entry in retrieval/embedding_tricks.py. Ranking-time ones (weights, PCA, DBA, QE, per-class
aggregation, class centers) go to inference/predict.py. A new trick = its function + one TRICKS entry (+ one
EMBEDDING_TRICKS entry and its Variant field when it changes the embeddings)."""
from dataclasses import dataclass, field
from typing import Callable

from pipeline.core.errors import UserError
from pipeline.data.query_views import OCCLUSION_FILLS
from pipeline.inference.logits import check_alpha
from pipeline.retrieval.embedding_tricks import EMBEDDING_TRICKS


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


def parse_scales(flag: str, text: str | None) -> tuple:
    """'0.75,1,1.25' -> (0.75, 1.0, 1.25), checked by its EMBEDDING_TRICKS entry; None or '' -> off."""
    try:
        values = tuple(float(x) for x in text.split(",")) if text else ()
    except ValueError:
        raise UserError(f"{flag} {text!r}: give scales like 0.75,1,1.25") from None
    return EMBEDDING_TRICKS[flag.removeprefix("--").replace("-", "_")].check(values)


def _off(name):
    """An embedding-time trick's tricks-dict key with its off value (retrieval/embedding_tricks.py)."""
    return {name: EMBEDDING_TRICKS[name].default}


def _flag(*names, **kw):
    return lambda g: g.add_argument(*names, **kw)


def _flags(*adders):
    return lambda g: [add(g) for add in adders]


# The PCA rows' dimension (-1) is picked from the data by the ablation (experiments/ablate.py).
TRICKS = {
    "flip": Trick(
        _off("flip"), "embedding",
        _flag("--flip", action="store_true", help="flip TTA: queries and gallery embed x and its mirror"),
        lambda a, n: {"flip": a.flip},
        (("flip TTA", {"flip": True}),)),
    "multicrop": Trick(
        _off("multicrop"), "embedding",
        _flag("--multicrop", type=int, default=0, choices=[0, 5, 9],
              help="queries as the mean of 5 or 9 crops, crops > 50%% red dropped (SPEC 2, Appendix D)"),
        lambda a, n: {"multicrop": a.multicrop},
        (("multi-crop 5 (red crops dropped)", {"multicrop": 5}),
         ("multi-crop 9 (red crops dropped)", {"multicrop": 9}))),
    "gallery_pipeline": Trick(
        _off("gallery_pipeline"), "embedding",
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
    "fill": Trick(
        _off("fill"), "embedding",
        _flag("--fill", default="none", choices=OCCLUSION_FILLS,
              help="queries' red occlusion filled before resizing: blendflip (mirrored neighbourhood, blended; "
                   "Hotel-ID 2022 1st) or inpaint (OpenCV)"),
        lambda a, n: {"fill": a.fill},
        (("occlusion fill: blendflip", {"fill": "blendflip"}), ("occlusion fill: inpaint", {"fill": "inpaint"}))),
    "rotate": Trick(
        {"rotate": False}, "embedding",
        _flag("--rotate", action="store_true",
              help="rotation TTA: queries embedded at 0/90/180/270 degrees, each class scored by its best turn"),
        lambda a, n: {"rotate": a.rotate},
        (("rotation TTA (best of 4 turns)", {"rotate": True}),)),
    "upright": Trick(
        _off("upright"), "embedding",
        _flag("--upright", action="store_true",
              help="queries turned upright first by a rotation classifier on the run's features (trained once, "
                   "self-supervised, on its training images: orientation.pt)"),
        lambda a, n: {"upright": a.upright},
        (("upright queries (rotation classifier)", {"upright": True}),)),
    "scales": Trick(
        {**_off("scales"), **_off("gallery_scales")}, "embedding",
        _flags(_flag("--scales", metavar="S1,S2,...", help="multi-scale TTA of the queries: embedded at each scale of "
                     "the run's input size, the normalised mean (e.g. 0.75,1,1.25)"),
               _flag("--gallery-scales", metavar="S1,S2,...", help="the same for the gallery")),
        lambda a, n: {"scales": parse_scales("--scales", a.scales),
                      "gallery_scales": parse_scales("--gallery-scales", a.gallery_scales)},
        (("multi-scale queries 0.75/1/1.25", {"scales": (0.75, 1.0, 1.25)}),
         ("multi-scale queries and gallery 0.75/1/1.25", {"scales": (0.75, 1.0, 1.25),
                                                           "gallery_scales": (0.75, 1.0, 1.25)})),
        {"scales": tuple, "gallery_scales": tuple}),
    "knn_alpha": Trick(
        {"knn_alpha": 1.0}, "ranking",
        _flag("--knn-alpha", type=float, default=1.0, metavar="A",
              help="class score = A x kNN similarity + (1 - A) x cosine to the head's class weight (classifier "
                   "heads; 1 = kNN only)"),
        lambda a, n: {"knn_alpha": check_alpha(a.knn_alpha)},
        (("kNN 0.5 + class weights 0.5", {"knn_alpha": 0.5}), ("class weights only (logits)", {"knn_alpha": 0.0}))),
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
