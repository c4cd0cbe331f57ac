"""Retrieval metrics of trained runs (and of a pretrained backbone, zero-shot) on the validation fold: Kaggle's
class-level MAP@5 and the instance metrics mAP@k, acc@1, precision@k, recall@k (retrieval/metrics.py). Queries are
the validation images and the gallery the training images without them (as `ensemble` scores), or with
leave-one-out the validation images against each other, or labelled test images against every training image."""
from pathlib import Path

from pipeline.config import check_name, config_names, fold_text, run_names
from pipeline.core.errors import UserError
from pipeline.experiments.scoring import need_queries, score, searched_gallery
from pipeline.inference.tricks import DEFAULTS, RANKING_TRICKS

METRICS = ("map@5", "map@k", "acc@1", "precision@k", "recall@k", "text")


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
    if out:  # the default is made of run names and folds: ours, and may hold ',' (folds 0,2) or ':' (hf-hub:)
        check_name(out, "--out")
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


def evaluate_runs(cfgs: list, metrics: list, ks: list, leave_one_out: bool = False, zero_shot: str | None = None,
                  log=print, queries: str = "val", tricks: dict | None = None) -> list:
    """One row {'model': name, column: value ...} per trained run, from its (cached) embeddings; with zero_shot
    (a timm backbone name), first the zero-shot row of that backbone on cfgs[0]'s data and fold (no tricks)."""
    from pipeline.data.layouts import load_dataset
    from pipeline.experiments.zero_shot import zero_shot_row
    from pipeline.retrieval.runsets import load_embeddings
    from pipeline.retrieval.search import Search

    tricks = dict(tricks or DEFAULTS, weights=None)
    searches = [Search.of(cfg) for cfg in cfgs]  # a bad search key fails before any embedding
    rows = [zero_shot_row(cfgs[0], zero_shot, metrics, ks, leave_one_out, log, queries)] if zero_shot else []
    for cfg, name, search in zip(cfgs, run_names(cfgs), searches):
        text = {}
        if "text" in metrics and cfg["head"] == "clip":
            from pipeline.text.retrieval import text_rows

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
    from pipeline.inference.predict import oof_map5
    from pipeline.retrieval.runsets import load_fold_sets

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


def write_report(rows: list, out_dir: Path, info: dict, log=print) -> None:
    import pandas as pd

    from pipeline.reports.tables import write_tables

    cols = list(dict.fromkeys(k for r in rows for k in r if k != "model"))
    frame = pd.DataFrame(rows, columns=["model"] + cols)
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    shown = pd.DataFrame([[r["model"]] + [cell(r[c]) if c in r else "" for c in cols] for r in rows],
                         columns=["model"] + cols)
    write_tables(out_dir, "metrics", frame, shown=shown, info=info, log=log)
