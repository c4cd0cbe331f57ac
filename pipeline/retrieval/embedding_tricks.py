"""EMBEDDING_TRICKS: the inference tricks that change how a run's images are embedded, one entry per Variant field
(retrieval/embeddings.py), in the order their parts stand in a cache file's stem. An entry holds the trick's off
value, the splits it applies to, its check, and what it adds to the file stem, to the cache key's text and to the
manifest: Variant reads all of it from here. What the trick does to the images is its function, where the images
are read (data/transforms.py: the occlusion fill, multi-crop, the val pipeline) or embedded (retrieval/forward.py:
flip, rotation, the rotation classifier); its command-line flags are its inference/tricks.py entry."""
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.core.errors import UserError
from pipeline.data.query_views import MULTICROPS, OCCLUSION_FILLS

SPLITS = ("gallery", "val", "test")
QUERY_SPLITS = ("val", "test")
GALLERY_PIPELINES = ("test", "val")


@dataclass(frozen=True)
class EmbeddingTrick:
    """default: the off value; splits: those it applies to (elsewhere it is off); check(value): the value in its
    plain type, a one-line UserError for one not allowed; stem(value): its part of the file stem ('' when off);
    key(value): its part of the cache key beyond the transform's own text; manifest: its field in manifest.json."""
    default: object
    splits: tuple
    check: Callable[[object], object]
    stem: Callable[[object], str]
    manifest: str
    key: Callable[[object], str] = lambda value: ""


def _one_of(what: str, allowed: tuple, hint: str = "") -> Callable[[object], object]:
    def check(value):
        if value not in allowed:
            raise UserError(f"{what} {value!r}: not one of {', '.join(map(str, allowed))}{hint}")
        return value
    return check


MAX_SCALE = 4.0  # an input side past 4x the trained one is no test-time scale


def _scales(what: str) -> Callable[[object], tuple]:
    """The check of a scales field: a tuple of floats in (0, MAX_SCALE], each once; (1.0,) alone is the plain
    embedding, ()."""
    def check(value):
        try:
            scales = tuple(float(s) for s in (value or ()))
        except (TypeError, ValueError):
            scales = None
        if scales is None or not all(0 < s <= MAX_SCALE for s in scales) or len(set(scales)) != len(scales):
            raise UserError(f"{what} {value!r}: give distinct input scales in (0, {MAX_SCALE:g}], e.g. 0.75,1,1.25")
        return () if scales == (1.0,) else scales
    return check


def _scales_stem(scales) -> str:
    return ".ms" + "-".join(f"{s:g}" for s in scales) if scales else ""


def _scales_key(scales) -> str:
    return f"|scales {','.join(f'{s:g}' for s in scales)}: mean of L2-normalised embeddings" if scales else ""


def _turns(value) -> int:
    if value not in (0, 1, 2, 3):
        raise UserError(f"rotation {value!r}: give 0-3 quarter turns")
    return int(value)


EMBEDDING_TRICKS = {
    # flip TTA: normalise(e(x) + e(hflip x))
    "flip": EmbeddingTrick(False, SPLITS, bool, lambda v: ".flip" if v else "", "flip",
                           lambda v: "|flip: normalise(e(x) + e(hflip x))" if v else ""),
    # multi-crop queries: the mean of the kept crops' embeddings (the transform's text names the crops)
    "multicrop": EmbeddingTrick(0, QUERY_SPLITS, lambda v: int(_one_of("multicrop", MULTICROPS, " (0 = off)")(v)),
                                lambda v: f".mc{v}" if v else "", "multicrop"),
    # the gallery embedded with the val pipeline (the simulated red hole); the manifest records the pipeline
    "gallery_pipeline": EmbeddingTrick("test", ("gallery",), _one_of("gallery pipeline", GALLERY_PIPELINES),
                                       lambda v: ".galval" if v == "val" else "", "pipeline"),
    # the queries' red occlusion filled before resizing (the transform's text names it)
    "fill": EmbeddingTrick("none", QUERY_SPLITS, _one_of("fill", OCCLUSION_FILLS),
                           lambda v: f".fill-{v}" if v != "none" else "", "fill"),
    # rotation TTA: each query view turned this many quarter turns
    "rotation": EmbeddingTrick(0, QUERY_SPLITS, _turns, lambda v: f".rot{v}" if v else "", "rotation",
                               lambda v: f"|rot90 x{v}" if v else ""),
    # queries turned upright by the run's rotation classifier; the key's text is frozen so caches stay valid
    "upright": EmbeddingTrick(False, QUERY_SPLITS, bool, lambda v: ".upright" if v else "", "upright",
                              lambda v: "|upright: inference/orientation.py" if v else ""),
    # multi-scale TTA (Hotel-ID 2022 1st: two input scales): each image embedded at each scale of the run's size,
    # the L2-normalised mean of the L2-normalised embeddings; queries and gallery each their own scales
    "scales": EmbeddingTrick((), QUERY_SPLITS, _scales("scales"), _scales_stem, "scales", _scales_key),
    "gallery_scales": EmbeddingTrick((), ("gallery",), _scales("gallery scales"), _scales_stem, "gallery_scales",
                                     _scales_key),
}
