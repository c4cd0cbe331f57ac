"""Inference-trick ablation: the validation MAP@5 of the runs' ensemble with the baseline tricks, then with each
ablation row of the trick table (inference/registry.py: TRICKS) alone on top; ablate.md/.csv/.json/.png."""
import time
from pathlib import Path

from pipeline.inference.registry import ABLATIONS, describe
from pipeline.retrieval.embeddings import Variant
from pipeline.retrieval.predict import load_embeddings, val_map5


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
        variant = Variant.of(t)
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
