"""Retrieval metrics of trained runs (and of a pretrained backbone, zero-shot) on the validation fold: Kaggle's
class-level MAP@5 and the instance metrics mAP@k, acc@1, precision@k, recall@k (retrieval/metrics.py). Queries are
the validation images and the gallery the training images without them (as `ensemble` scores), or with
leave-one-out the validation images against each other, or labelled test images against every training image."""
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.config import config_names, fold_text, run_names
from pipeline.errors import UserError
from pipeline.inference.registry import DEFAULTS, RANKING_TRICKS
from pipeline.retrieval.embeddings import EmbeddingSet

METRICS = ("map@5", "map@k", "acc@1", "precision@k", "recall@k", "text")
_INSTANCE = {"map@k": "mAP@k", "acc@1": "acc@1", "precision@k": "precision@k", "recall@k": "recall@k"}


def parse_metrics(text: str) -> list[str]:
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics '{text}': unknown metric '{bad[0] if bad else ''}' (choose from "
                        f"{','.join(METRICS)})")
    return list(dict.fromkeys(names))


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise UserError(f"--k '{text}': give comma-separated positive integers, e.g. --k 1,5,10")
    return list(dict.fromkeys(ks))


def evaluate(cfgs: list, base: dict, metrics: list, ks: list, tricks: dict, leave_one_out: bool = False,
             queries: str = "val", zero_shot: str | None = None, out: str | None = None, ablate: bool = False,
             oof: bool = False, log=print, seeds: int | None = None, compare: str | None = None) -> None:
    """The evaluate stage: the metrics table of the runs (and the zero-shot row) in runs/evaluate/<out>/, or with
    ablate the runs' ensemble once per inference trick, or with oof each config's out-of-fold MAP@5 over its runs
    on several folds. base: cfgs[0], or the default config without runs."""
    folds = fold_text(c["fold"] for c in cfgs)
    default = config_names(cfgs) if oof else run_names(cfgs)
    out = out or "+".join(default + ([f"zero-shot-{zero_shot}"] if zero_shot else [])) + (f"-oof{folds}" if oof
                                                                                         else "")
    out_dir = Path(base["runs_dir"]) / "evaluate" / out.replace("/", "_")
    if oof:
        if not cfgs or ablate or leave_one_out or queries != "val" or zero_shot or metrics != ["map@5"]:
            raise UserError("--oof scores trained runs' map@5 on their validation folds: give runs, without "
                            "--ablate / --leave-one-out / --queries test / --zero-shot / other --metrics")
        write_report(oof_rows(cfgs, tricks, log), out_dir, {"metrics": ["map@5"], "oof": True,
                     "folds": list(dict.fromkeys(c["fold"] for c in cfgs)), "data": str(base["data"]),
                     "tricks": tricks}, log)
        return
    if ablate:
        from pipeline.experiments.ablate import ablate as run_ablation

        if not cfgs or leave_one_out or queries != "val" or len({c["fold"] for c in cfgs}) > 1:
            raise UserError("--ablate scores trained runs on one validation fold: give runs, without "
                            "--leave-one-out / --queries test / --folds")
        if seeds:
            from pipeline.experiments.ablate import ablate_seeds

            ablate_seeds(cfgs, tricks, seeds, compare, out_dir, log=log)
        else:
            run_ablation(cfgs, tricks, out_dir, log=log)
        return
    if seeds or compare:
        raise UserError("--seeds / --compare go with --ablate: ./run.sh evaluate m1 m2 --ablate --seeds 3")
    if leave_one_out and any(tricks[k] != DEFAULTS[k] for k in RANKING_TRICKS):
        raise UserError("--leave-one-out scores without the ranking tricks (--qe, --dba, --pca, --agg, --weights)")
    if cfgs:
        rows = evaluate_runs(cfgs, metrics, ks, leave_one_out, zero_shot, log=log, queries=queries, tricks=tricks)
    else:
        from pipeline.experiments.zero_shot import zero_shot_row

        rows = [zero_shot_row(base, zero_shot, metrics, ks, leave_one_out, log=log, queries=queries)]
    write_report(rows, out_dir, {"metrics": metrics, "ks": ks, "leave_one_out": leave_one_out, "queries": queries,
                                 "fold": base["fold"], "data": str(base["data"]), "tricks": tricks}, log)


def score(queries: EmbeddingSet, gallery: EmbeddingSet, classes: list, metrics: list, ks: list,
          leave_one_out: bool = False, max_memory: int = 2 << 30, log=print, tricks: dict | None = None,
          search=None, centers=None) -> dict:
    """{column: value} of the metrics for one model's queries against a gallery (columns in the order of
    `metrics`); tricks: the ranking-time inference tricks for map@5 (none by default); search: its rank()'s
    search (the config's, retrieval/rank_modes.py; None: exact)."""
    from pipeline.retrieval.metrics import class_map5_leave_one_out, instance_metrics
    from pipeline.retrieval.predict import map5
    from pipeline.retrieval.search import nearest

    q = np.asarray(queries.array)
    row, rel = {}, None
    for m in metrics:
        if m == "text":  # image-text rows of clip runs: text/search.text_rows
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


def evaluate_runs(cfgs: list, metrics: list, ks: list, leave_one_out: bool = False, zero_shot: str | None = None,
                  log=print, queries: str = "val", tricks: dict | None = None) -> list:
    """One row {'model': name, column: value ...} per trained run, from its (cached) embeddings; with zero_shot
    (a timm backbone name), first the zero-shot row of that backbone on cfgs[0]'s data and fold (no tricks)."""
    from pipeline.data.layouts import load_dataset
    from pipeline.experiments.zero_shot import zero_shot_row
    from pipeline.retrieval.predict import load_embeddings
    from pipeline.retrieval.rank_modes import Search

    tricks = dict(tricks or DEFAULTS, weights=None)
    searches = [Search.of(cfg) for cfg in cfgs]  # a bad search key fails before any embedding
    rows = [zero_shot_row(cfgs[0], zero_shot, metrics, ks, leave_one_out, log, queries)] if zero_shot else []
    for cfg, name, search in zip(cfgs, run_names(cfgs), searches):
        text = {}
        if "text" in metrics and cfg["head"] == "clip":
            from pipeline.text.search import text_rows

            reference, text = text_rows(cfg, name, ks, log)
            rows.append(reference)  # the untrained model, right before the run's row
        if all(m == "text" for m in metrics):
            rows.append({"model": name, **text})
            continue
        inputs = load_embeddings([cfg], tricks, log=log)
        q = getattr(inputs, queries)
        need_queries(cfg, queries, q.ids, q.labels)
        g = searched_gallery(inputs.gallery, q, leave_one_out, queries)
        rows.append({"model": name, **score(q, g, load_dataset(cfg["data"], cfg).classes, metrics, ks,
                                                   leave_one_out, cfg["max_memory"], log, tricks, search,
                                                   inputs.centers), **text})
        log(f"evaluated {cfg['name']} fold {cfg['fold']}: {len(q)} queries, {len(g)} gallery images")
    return rows


def oof_rows(cfgs: list, tricks: dict, log=print) -> list:
    """Per config: a row per fold (the fold's run: its validation images against its gallery without them, as
    `ensemble` scores) and the out-of-fold row, MAP@5 pooled over every validated image ('queries': their count)."""
    from pipeline.data.layouts import load_dataset
    from pipeline.retrieval.predict import load_fold_sets, oof_map5

    tricks, rows = dict(tricks, weights=None), []
    for name in config_names(cfgs):
        runs = [c for c in cfgs if c["name"] == name]
        sets = load_fold_sets(runs, tricks, log=log)
        sets.need_val(runs[0])
        per_fold, pooled, _ = oof_map5(sets, load_dataset(runs[0]["data"], runs[0]).classes, tricks,
                                    runs[0]["max_memory"], log)
        rows += [{"model": f"{name}/fold{f}", "map@5": s, "queries": n} for f, (s, n) in per_fold.items()]
        rows.append({"model": f"{name} out-of-fold", "map@5": pooled, "queries": sum(n for _, n in per_fold.values())})
        log(f"evaluated {name} out of fold: {rows[-1]['queries']} validated images over {len(per_fold)} fold(s)")
    return rows


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
    from pipeline.retrieval.predict import need_val

    if split == "val":
        need_val(ids, cfg)
    if split == "test" and (not ids or not all(labels)):
        raise UserError(f"--queries test: the test images of {cfg['data']} are missing or unlabelled; it needs "
                        "labelled queries (layout query_gallery: query/<class>/<image>)")


def write_report(rows: list, out_dir: Path, info: dict, log=print) -> None:
    import pandas as pd

    from pipeline.reports.tables import write_tables

    cols = list(dict.fromkeys(k for r in rows for k in r if k != "model"))
    frame = pd.DataFrame(rows, columns=["model"] + cols)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    shown = pd.DataFrame([[r["model"]] + [cell(r[c]) if c in r else "" for c in cols] for r in rows],
                         columns=["model"] + cols)
    write_tables(out_dir, "metrics", frame, shown=shown, info=info, log=log)
