"""Equal-weight ensembles of trained runs: the summed cosine similarities of the models, per-class max over the
gallery, top 5 classes. `ensemble` scores each model and their ensemble on the validation fold and writes the test
submission; `ensemble_report` scores every subset of the models (the 7th-place paper's Table 2)."""
import itertools
import json
import math
import time
from pathlib import Path

from pipeline.errors import UserError
from pipeline.retrieval.predict import DEFAULTS, describe, load_embeddings, need_val, predict, val_map5

MAX_SUBSETS = 4096


def ensemble(cfgs: list, out_name: str | None = None, log=print, tricks: dict | None = None) -> dict:
    """Returns {'models': {name: val_map5}, 'ensemble': {'val_map5', 'test_map5'?}, 'submission': path} and writes
    submissions/<out>.csv, runs/ensembles/<out>/scores.json and scores.md."""
    import pandas as pd

    from pipeline.data.layouts import load_dataset
    from pipeline.io import write_text
    from pipeline.kaggle.submission import read_truth, write_submission
    from pipeline.reports.tables import markdown
    from pipeline.retrieval.metrics import map_at_k

    tricks = tricks or dict(DEFAULTS)
    inputs = load_embeddings(cfgs, tricks, log=log)
    out_name = out_name or "+".join(inputs.names)
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    classes, mem = ds.classes, cfgs[0]["max_memory"]
    report = {"models": {}, "ensemble": {}, "fold": cfgs[0]["fold"], "tricks": tricks}
    if tricks != DEFAULTS:
        log(f"inference tricks: {describe(tricks)}")
    if inputs.val.ids:
        for i, n in enumerate(inputs.names):
            report["models"][n] = val_map5(inputs, classes, tricks, mem, log, models=[i])
        report["ensemble"]["val_map5"] = val_map5(inputs, classes, tricks, mem, log)
    sub_path, truth_path = None, Path(cfgs[0]["data"]) / "test_truth.csv"
    if ds.test_ids:
        preds = predict(inputs.test.arrays, inputs.gallery, classes, tricks, mem, log)
        sub_path = Path("submissions") / f"{out_name}.csv"
        write_submission(sub_path, inputs.test.ids, preds, expected_ids=ds.test_ids, known_classes=classes,
                         id_column=ds.id_column, label_column=ds.label_column)
        if truth_path.is_file():  # the embedded dataset ships its answers
            truth = read_truth(truth_path)
            report["ensemble"]["test_map5"] = map_at_k(preds, [truth[i] for i in inputs.test.ids], k=5)
    report["submission"] = str(sub_path) if sub_path else None
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    write_text(out_dir / "scores.json", json.dumps(report, indent=1))
    rows = [(n, f"{s:.4f}") for n, s in report["models"].items()]
    if "val_map5" in report["ensemble"]:
        rows.append((f"**ensemble ({len(inputs.names)})**", f"**{report['ensemble']['val_map5']:.4f}**"))
    table = markdown(pd.DataFrame(rows, columns=["model", "val MAP@5"]))
    write_text(out_dir / "scores.md", table)
    log(table.rstrip())
    if "test_map5" in report["ensemble"]:
        log(f"test MAP@5 against {truth_path}: {report['ensemble']['test_map5']:.4f}")
    if sub_path:
        log(f"wrote {sub_path} ({len(preds)} rows)")
    return report


def subsets(n: int, max_size: int | None = None) -> list:
    """Index tuples of every non-empty subset of range(n) with at most max_size members: by size, then in order."""
    top = n if max_size is None else min(max_size, n)
    return [s for k in range(1, top + 1) for s in itertools.combinations(range(n), k)]


def count_subsets(n: int, max_size: int | None = None) -> int:
    top = n if max_size is None else min(max_size, n)
    return sum(math.comb(n, k) for k in range(1, top + 1))


def mark_best(rows: list) -> list:
    """Sets row['best_of_size']: True on the highest val MAP@5 of each subset size (the first listed on a tie)."""
    best = {}
    for i, r in enumerate(rows):
        if r["size"] not in best or r["val_map5"] > rows[best[r["size"]]]["val_map5"]:
            best[r["size"]] = i
    for i, r in enumerate(rows):
        r["best_of_size"] = best[r["size"]] == i
    return rows


def ensemble_report(cfgs: list, max_size: int | None = None, out_name: str | None = None, log=print,
                    tricks: dict | None = None) -> list:
    """Val MAP@5 of every subset's equal-weight ensemble (each model's embeddings loaded once); returns the rows
    [{'models': [names], 'size', 'val_map5', 'best_of_size'}] (by size, then in config order) and writes
    runs/ensembles/<out>/report.md, .csv, .json, .png."""
    from pipeline.data.layouts import load_dataset

    tricks = tricks or dict(DEFAULTS)
    names = [c["name"] for c in cfgs]
    total = count_subsets(len(names), max_size)
    if total > MAX_SUBSETS:
        fit = max(k for k in range(1, len(names) + 1) if count_subsets(len(names), k) <= MAX_SUBSETS)
        raise UserError(f"{len(names)} models have {total} subsets (more than {MAX_SUBSETS}): limit them with "
                        f"--max-size {fit} or fewer")
    out_name = (out_name or "+".join(names)).replace("/", "_")
    inputs = load_embeddings(cfgs, tricks, log=log)
    need_val(inputs.val.ids, cfgs[0])
    classes = load_dataset(cfgs[0]["data"], cfgs[0]).classes
    rows, t0 = [], time.time()
    for n, s in enumerate(subsets(len(names), max_size), start=1):
        score = val_map5(inputs, classes, tricks, cfgs[0]["max_memory"], log, models=s)
        rows.append({"models": [names[i] for i in s], "size": len(s), "val_map5": score})
        log(f"[{n}/{total}] {'+'.join(names[i] for i in s)}: val MAP@5 {score:.4f} ({time.time() - t0:.0f}s)")
    mark_best(rows)
    info = {"models": names, "max_size": max_size or len(names), "fold": cfgs[0]["fold"],
            "data": str(cfgs[0]["data"]), "val_images": len(inputs.val), "gallery_images": len(inputs.val_gallery),
            "tricks": tricks}
    write_subset_report(rows, Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name, info, log)
    return rows


def write_subset_report(rows: list, out_dir: Path, info: dict, log=print) -> None:
    import pandas as pd

    from pipeline.reports.plots import subset_scores
    from pipeline.reports.tables import write_tables

    frame = pd.DataFrame(rows, columns=["size", "models", "val_map5", "best_of_size"])
    shown = pd.DataFrame({"size": frame["size"].astype(str), "models": [" + ".join(m) for m in frame["models"]],
                          "val MAP@5": [f"**{v:.4f}**" if b else f"{v:.4f}"
                                        for v, b in zip(frame["val_map5"], frame["best_of_size"])],
                          "best of size": ["✓" if b else "" for b in frame["best_of_size"]]})
    table = write_tables(out_dir, "report", frame, shown=shown, info=info, log=lambda *a: None)
    subset_scores(rows, out_dir / "report.png")
    log(table + f"wrote {out_dir / 'report.md'}, report.csv, report.json, report.png")
