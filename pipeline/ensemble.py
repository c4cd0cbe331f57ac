"""Equal-weight ensemble of trained runs: sum of the models' cosine similarities (= dot product of the concatenated
per-model normalised embeddings), per-class max over the gallery, top 5 unique classes. Reports each model's and
the ensemble's validation MAP@5 (validation images against the gallery without them) and writes the test
submission to submissions/<out>.csv (plus runs/ensembles/<out>/scores.json and scores.md). The inference tricks
(flip TTA, multi-crop, QE/DBA, PCA, per-class sum, weights) are options, off by default; see evaluate --ablate.

example: ./run.sh ensemble m1 m2 m3 --data data/demo --fold 0 --out m123 [--flip] [--dba 5,3]"""
import json
from pathlib import Path

from . import scoring
from .config import add_run_set_arguments, load_run_set
from .errors import UserError


def add_arguments(p):
    p.add_argument("configs", nargs="+", metavar="config", help="trained configs (m1 m2 ...); key=value overrides "
                   "may follow")
    add_run_set_arguments(p)
    p.add_argument("--out", help="submission name (default: the config names joined by '+')")
    scoring.add_arguments(p)


def run(args):
    cfgs = load_run_set(args.configs, args)
    if not cfgs:
        raise UserError("no configs given: ./run.sh ensemble m1 m2 m3 ...")
    ensemble(cfgs, args.out, tricks=scoring.from_args(args, len(cfgs)))


def ensemble(cfgs, out_name=None, log=print, tricks=None):
    """Returns {'models': {name: val_map5}, 'ensemble': {'val_map5', 'test_map5'?}, 'submission': path}."""
    from .data.layouts import load_dataset
    from .io import write_text
    from .submission import read_truth, write_submission

    tricks = tricks or dict(scoring.DEFAULTS)
    inputs = scoring.load_inputs(cfgs, tricks, log=log)
    names = inputs["names"]
    out_name = out_name or "+".join(names)
    ds = load_dataset(cfgs[0]["data"], cfgs[0])
    classes, mem = ds.classes, cfgs[0]["max_memory"]
    report = {"models": {}, "ensemble": {}, "fold": cfgs[0]["fold"], "tricks": tricks}
    if tricks != scoring.DEFAULTS:
        log(f"inference tricks: {scoring.describe(tricks)}")
    if inputs["val"][1]:
        for i, n in enumerate(names):
            report["models"][n] = scoring.val_map5(inputs, classes, tricks, mem, log, models=[i])
        report["ensemble"]["val_map5"] = scoring.val_map5(inputs, classes, tricks, mem, log)

    sub_path = None
    test, (gal, _, gallery_labels) = inputs["test"], inputs["gallery"]
    if ds.test_ids:
        preds = scoring.predict(test[0], gal, gallery_labels, classes, tricks, mem, log)
        sub_path = Path("submissions") / f"{out_name}.csv"
        write_submission(sub_path, test[1], preds, expected_ids=ds.test_ids, known_classes=classes,
                         id_column=ds.id_column, label_column=ds.label_column)
        truth_path = Path(cfgs[0]["data"]) / "test_truth.csv"
        if truth_path.is_file():  # the embedded dataset ships its answers
            from .metrics import map_at_k

            truth = read_truth(truth_path)
            report["ensemble"]["test_map5"] = map_at_k(preds, [truth[i] for i in test[1]], k=5)
    report["submission"] = str(sub_path) if sub_path else None
    out_dir = Path(cfgs[0]["runs_dir"]) / "ensembles" / out_name
    write_text(out_dir / "scores.json", json.dumps(report, indent=1))
    lines = ["| model | val MAP@5 |", "|---|---|"] + [f"| {n} | {s:.4f} |" for n, s in report["models"].items()]
    if "val_map5" in report["ensemble"]:
        lines.append(f"| **ensemble ({len(names)})** | **{report['ensemble']['val_map5']:.4f}** |")
    write_text(out_dir / "scores.md", "\n".join(lines) + "\n")
    log("\n".join(lines))
    if "test_map5" in report["ensemble"]:
        log(f"test MAP@5 against {truth_path}: {report['ensemble']['test_map5']:.4f}")
    if sub_path:
        log(f"wrote {sub_path} ({len(preds)} rows)")
    return report
