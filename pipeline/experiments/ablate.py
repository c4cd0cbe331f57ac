"""Inference-trick ablation: the validation MAP@5 of the runs' ensemble with the baseline tricks, then with each
ablation row of the trick table (inference/tricks.py: TRICKS) alone on top; ablate.md/.csv/.json/.png."""
import time
from pathlib import Path

from pipeline.config import check_name
from pipeline.inference.predict import val_map5
from pipeline.inference.tricks import ABLATIONS, describe
from pipeline.retrieval.embeddings import Variant
from pipeline.retrieval.runsets import load_embeddings


def pca_dim(inputs) -> int:
    """The ablation's PCA dimension: half the concatenated one, at most 128 and below the validation gallery's
    row count."""
    dim = sum(g.shape[1] for g in inputs.gallery.arrays)
    return max(1, min(128, dim // 2, len(inputs.val_gallery) - 1))


def ablate(cfgs: list, tricks: dict, out_dir: Path, log=print) -> list:
    """Rows {trick, val_map5, delta, seconds, tricks}: the baseline, then each ablation row alone. Each embedding
    variant is loaded once."""
    import pandas as pd

    from pipeline.data.layouts import load_dataset
    from pipeline.reports.plots import ablation_bars
    from pipeline.reports.tables import write_tables

    classes, mem = load_dataset(cfgs[0]["data"], cfgs[0]).classes, cfgs[0]["max_memory"]
    loaded, rows = {}, []
    for i, (name, change) in enumerate([("baseline", {})] + ABLATIONS):
        t = dict(tricks, **change)
        variant = (Variant.of(t), t["rotate"])  # rotation TTA loads the other turns beside the same variant
        if variant not in loaded:
            loaded[variant] = load_embeddings(cfgs, t, log=log)
        if t["pca"] == -1:
            t["pca"] = pca_dim(loaded[variant])
            name = name.format(dim=t["pca"])
        t0 = time.time()
        score = val_map5(loaded[variant], classes, t, mem, log=lambda *a: None)
        rows.append({"trick": name, "val_map5": score, "delta": score - rows[0]["val_map5"] if rows else 0.0,
                     "seconds": time.time() - t0, "tricks": describe(t)})
        log(f"[{i + 1}/{len(ABLATIONS) + 1}] {name}: val MAP@5 {score:.4f}")
    frame = pd.DataFrame(rows, columns=["trick", "val_map5", "delta", "seconds", "tricks"])
    shown = pd.DataFrame({"trick": frame["trick"], "val MAP@5": frame["val_map5"].map("{:.4f}".format),
                          "Δ vs baseline": frame["delta"].map("{:+.4f}".format),
                          "ranking s": frame["seconds"].map("{:.2f}".format)})
    title = (f"Ablation over {' + '.join(c['name'] for c in cfgs)} (fold {cfgs[0]['fold']}; baseline tricks: "
             f"{describe(tricks)})")
    table = write_tables(out_dir, "ablate", frame, shown=shown, title=title, log=lambda *a: None,
                         info={"models": [c["name"] for c in cfgs], "fold": cfgs[0]["fold"], "baseline": tricks})
    ablation_bars(rows, out_dir / "ablate.png")
    log(table + f"wrote {out_dir / 'ablate.md'}, ablate.csv, ablate.json, ablate.png")
    return rows


def ablate_seeds(cfgs: list, tricks: dict, seeds: int, compare_out: str | None, out_dir: Path, log=print) -> list:
    """ablate() over the runs of seeds 1..N as `compare` trains them (runs/compare/<out>/seed<s>/), then per trick
    the mean ± std over seeds of its val MAP@5 and of its gain over that seed's baseline; ablate.md/.csv/.json
    beside each seed's own table in seed<s>/."""
    import statistics

    import pandas as pd

    from pipeline.config import config_names, run_dir
    from pipeline.core.errors import UserError
    from pipeline.reports.tables import write_tables

    names = config_names(cfgs)
    compare_out = check_name(compare_out, "--compare") if compare_out else "+".join(names)
    root = Path(cfgs[0]["runs_dir"]) / "compare" / compare_out
    per_seed = []
    for s in range(1, seeds + 1):
        runs = [dict(c, seed=s, runs_dir=str(root / f"seed{s}")) for c in cfgs]
        missing = [run_dir(c) for c in runs if not (run_dir(c) / f"{c['checkpoint']}.pt").is_file()]
        if missing:
            raise UserError(f"{missing[0]} has no {runs[0]['checkpoint']}.pt: train the seeds first with "
                            f"./run.sh compare {' '.join(names)} --seeds {seeds} --out {compare_out}")
        log(f"seed {s} of {seeds}:")
        per_seed.append(ablate(runs, tricks, out_dir / f"seed{s}", log=log))
    rows = []
    for i, first in enumerate(per_seed[0]):
        vals, deltas = [r[i]["val_map5"] for r in per_seed], [r[i]["delta"] for r in per_seed]
        sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
        rows.append({"trick": first["trick"], "val_map5_mean": statistics.mean(vals), "val_map5_std": sd(vals),
                     "delta_mean": statistics.mean(deltas), "delta_std": sd(deltas), "seeds": len(vals),
                     "tricks": first["tricks"]})
    frame = pd.DataFrame(rows)
    shown = pd.DataFrame({"trick": frame["trick"], "val MAP@5": [f"{m:.4f} ± {s:.4f}" for m, s in
                                                                 zip(frame["val_map5_mean"], frame["val_map5_std"])],
                          "Δ vs baseline": [f"{m:+.4f} ± {s:.4f}" for m, s in
                                            zip(frame["delta_mean"], frame["delta_std"])]})
    title = (f"Ablation over {' + '.join(names)}, seeds 1-{seeds} (mean ± std; fold {cfgs[0]['fold']}; baseline "
             f"tricks: {describe(tricks)})")
    table = write_tables(out_dir, "ablate", frame, shown=shown, title=title, log=lambda *a: None,
                         info={"models": names, "seeds": seeds, "compare": compare_out, "baseline": tricks})
    log(table + f"wrote {out_dir / 'ablate.md'}, ablate.csv, ablate.json")
    return rows


def in_half_a(image_id: str, seed: int) -> bool:
    """Whether a validation image is in the half that chooses (the other half confirms): a seeded hash, so the
    halves are the same on every call and for every model."""
    import hashlib

    return int(hashlib.sha1(f"{seed}|{image_id}".encode()).hexdigest(), 16) % 2 == 0


def auto_choose(cfgs: list, tricks: dict, out_dir: Path, seed: int = 0, log=print) -> dict:
    """ensemble-report --auto: on half A of the validation images choose the subset of models (every subset with
    the given tricks), then each ablation row in turn kept when it raises half A's MAP@5 (rows that cannot combine
    with those kept are skipped), then the subset again under the kept tricks; confirm on half B against all models
    without tricks. Writes auto.md/.csv/.json and best.json (for kernel --from-report); returns best.json's record."""
    import pandas as pd

    from pipeline.config import config_names
    from pipeline.core.errors import UserError
    from pipeline.data.layouts import load_dataset
    from pipeline.experiments.subsets import BEST_JSON, subsets, write_best
    from pipeline.inference.predict import oof_predictions
    from pipeline.reports.tables import write_tables
    from pipeline.retrieval.metrics import map_at_k
    from pipeline.retrieval.runsets import load_fold_sets

    names, classes, mem = config_names(cfgs), load_dataset(cfgs[0]["data"], cfgs[0]).classes, cfgs[0]["max_memory"]
    loaded, quiet = {}, (lambda *a: None)

    def halves(models, t):
        key = (Variant.of(t), t["rotate"])
        if key not in loaded:
            loaded[key] = load_fold_sets(cfgs, t, log=log)
        per_fold, ids = oof_predictions(loaded[key], classes, t, mem, quiet, list(models))
        preds = [p for ps, _ in per_fold.values() for p in ps]
        truth = [x for _, ts in per_fold.values() for x in ts]
        side = [in_half_a(i, seed) for i in ids]
        pick = (lambda want: ([p for p, a in zip(preds, side) if a == want], [x for x, a in zip(truth, side)
                                                                                if a == want]))
        return map_at_k(*pick(True), k=5), map_at_k(*pick(False), k=5), map_at_k(preds, truth, k=5)

    def best_subset(t):
        scored = [(halves(s, t), s) for s in subsets(len(names))]
        return max(scored, key=lambda x: x[0][0])  # the first of the best: subsets go by size

    steps = []
    (score, chosen), current = best_subset(tricks), dict(tricks)
    steps.append(("subset", chosen, current, score))
    for label, change in ABLATIONS:
        t = dict(current, **change)
        if t["pca"] == -1:
            t["pca"] = pca_dim(loaded[next(iter(loaded))].every)
            label = label.format(dim=t["pca"])
        try:
            s = halves(chosen, t)
        except UserError as e:
            log(f"auto: {label}: skipped ({e})")
            continue
        log(f"auto: {label}: half A {s[0]:.4f} (kept so far {score[0]:.4f})")
        if s[0] > score[0] + 1e-9:  # a real gain: one more query ranked better moves MAP@5 by >= 1 / (5 queries)
            score, current = s, t
            steps.append((f"+ {label}", chosen, current, score))
    score, chosen = best_subset(current)
    steps.append(("subset again", chosen, current, score))
    plain = halves(range(len(names)), tricks)
    steps.append(("all models, given tricks", tuple(range(len(names))), tricks, plain))
    frame = pd.DataFrame([{"step": st, "models": "+".join(names[i] for i in m), "tricks": describe(t),
                           "half_a": a, "half_b": b, "val_map5": v} for st, m, t, (a, b, v) in steps])
    shown = frame.assign(**{c: frame[c].map("{:.4f}".format) for c in ("half_a", "half_b", "val_map5")})
    table = write_tables(out_dir, "auto", frame, shown=shown, log=quiet,
                         title=f"ensemble-report --auto: chosen on half A, confirmed on half B (seed {seed})",
                         info={"models": names, "seed": seed})
    record = write_best([{"models": [names[i] for i in chosen], "val_map5": score[2]}], out_dir / BEST_JSON, cfgs,
                        current)
    log(table + f"auto: {' + '.join(record['models'])} with {describe(current)}: half B {score[1]:.4f} against "
        f"{plain[1]:.4f} for all models with the given tricks; wrote {out_dir / 'auto.md'} and {out_dir / BEST_JSON}")
    return record
