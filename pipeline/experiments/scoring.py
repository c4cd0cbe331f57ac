"""Scoring one set of queries against a gallery: Kaggle's class-level MAP@5 and the instance metrics
(retrieval/metrics.py), the gallery a split's queries search, and the check that the queries exist (evaluate and
the zero-shot row share them)."""
from collections import Counter

import numpy as np

from pipeline.core.errors import UserError
from pipeline.inference.tricks import DEFAULTS
from pipeline.retrieval.embeddings import EmbeddingSet

_INSTANCE = {"map@k": "mAP@k", "acc@1": "acc@1", "precision@k": "precision@k", "recall@k": "recall@k"}


def score(queries: EmbeddingSet, gallery: EmbeddingSet, classes: list, metrics: list, ks: list,
          leave_one_out: bool = False, max_memory: int = 2 << 30, log=print, tricks: dict | None = None,
          search=None, centers=None) -> dict:
    """{column: value} of the metrics for one model's queries against a gallery (columns in the order of
    `metrics`); tricks: the ranking-time inference tricks for map@5 (none by default); search: its rank()'s
    search (the config's, retrieval/search.py; None: exact)."""
    from pipeline.inference.predict import map5
    from pipeline.retrieval.knn import nearest
    from pipeline.retrieval.metrics import class_map5_leave_one_out, instance_metrics

    q = np.asarray(queries.array)
    row, rel = {}, None
    for m in metrics:
        if m == "text":  # image-text rows of clip runs: text/retrieval.text_rows
            continue
        if m == "map@5":
            row[m] = (class_map5_leave_one_out(q, queries.labels, max_memory) if leave_one_out else
                      map5(queries, gallery, classes, tricks or DEFAULTS, max_memory, log, search=search,
                           centers=centers))
            continue
        if rel is None:
            own = np.arange(len(q)) if leave_one_out else None  # the queries are the gallery: skip itself
            idx = nearest(q, gallery.array, max(ks), max_memory, exclude=own).indices
            rel = np.asarray(gallery.labels, object)[idx] == np.asarray(queries.labels, object)[:, None]
            counts = Counter(gallery.labels)
            n_rel = [counts[x] - int(leave_one_out) for x in queries.labels]
        row.update(instance_metrics(rel, n_rel, ks, [_INSTANCE[m]]))
    return row


def searched_gallery(gallery: EmbeddingSet | None, queries: EmbeddingSet, leave_one_out: bool,
                     split: str) -> EmbeddingSet:
    """The gallery the queries search: the queries themselves (leave-one-out), every training image for test
    queries (they are not training images), else the training images without the validation rows, so a query
    never finds itself (as ensemble scores)."""
    if leave_one_out:
        return queries
    return gallery if split == "test" else gallery.without(queries.ids)


def need_queries(cfg: dict, split: str, ids: list, labels: list) -> None:
    """A UserError when the queries of a split are missing (val) or missing or unlabelled (test)."""
    from pipeline.retrieval.runsets import need_val

    if split == "val":
        need_val(ids, cfg)
    if split == "test" and (not ids or not all(labels)):
        raise UserError(f"--queries test: the test images of {cfg['data']} are missing or unlabelled; it needs "
                        "labelled queries (layout query_gallery: query/<class>/<image>)")
