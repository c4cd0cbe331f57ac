"""Pictures a person would rather look at than a CSV."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.core.io import atomic_path


def training_curves(rows: list[dict], path: str | Path, title: str = "") -> None:
    """rows: metrics.csv rows (dicts). Loss on the left, val accuracy and MAP@5 on the right."""
    ep = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [float(r["train_loss"]) for r in rows], "o-", label="train loss")
    for ax, key, label in ((a, "val_loss", "val loss"), (b, "val_acc", "val_acc"), (b, "val_map5", "val_map5"),
                           (b, "ema_val_map5", "ema_val_map5")):
        done = [(e, float(r[key])) for e, r in zip(ep, rows) if r.get(key, "") != ""]  # validated epochs only
        if done:  # (val_every > 1 leaves the others empty: joined, not broken into lone markers)
            ax.plot(*zip(*done), "o-", label=label)
    a.set_xlabel("epoch"), a.legend(), a.grid(alpha=0.3)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.grid(alpha=0.3)
    if b.get_legend_handles_labels()[0]:  # nothing validated yet: no legend, no warning
        b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def compare_bars(summary: list[dict], metric: str, path: str | Path) -> None:
    """summary: compare rows {model, metric: (mean, std)}; bars with std error bars, the zero-shot row grey."""
    rows = [r for r in summary if metric in r]
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.8))
    colors = ["0.6" if r["seeds"] == 0 else "C0" for r in rows]
    ax.bar(range(len(rows)), [r[metric][0] for r in rows], yerr=[r[metric][1] for r in rows], color=colors,
           capsize=4)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel(f"val {metric} (mean ± std over seeds)"), ax.set_ylim(0, 1), ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def subset_scores(rows: list[dict], path: str | Path,
                  title: str = "val MAP@5 of every subset's equal-weight ensemble") -> None:
    """rows: ensemble-report rows {models, size, val_map5, best_of_size}. One dot per subset over its size (spread
    sideways within a size), the best of each size a red star labelled with its models, joined by a line."""
    sizes = sorted({r["size"] for r in rows})
    fig, ax = plt.subplots(figsize=(2.2 * len(sizes) + 3, 4.2))
    stars = []
    for k in sizes:
        group = [r for r in rows if r["size"] == k]
        xs = [k + (0.5 * (i / (len(group) - 1) - 0.25) if len(group) > 1 else 0) for i in range(len(group))]
        ax.scatter(xs, [r["val_map5"] for r in group], color="C0", alpha=0.6, s=22)
        for x, r in zip(xs, group):
            if r["best_of_size"]:
                ax.scatter([x], [r["val_map5"]], color="C3", marker="*", s=160, zorder=3)
                stars.append((x, r["val_map5"]))
                label = "+".join(r["models"])
                label = f"{label if len(label) <= 40 else label[:37] + '...'} {r['val_map5']:.4f}"
                ax.annotate(label, (x, r["val_map5"]),
                            textcoords="offset points", xytext=(6, 6), fontsize=7, color="C3")
    ax.plot(*zip(*stars), "--", color="C3", alpha=0.5, label="best of size")
    lo, hi = min(r["val_map5"] for r in rows), max(r["val_map5"] for r in rows)
    pad = max(0.02, 0.15 * (hi - lo))
    ax.set_xticks(sizes), ax.set_xlabel("models in the ensemble"), ax.set_ylabel("val MAP@5")
    ax.set_xlim(sizes[0] - 0.6, sizes[-1] + 0.9), ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.grid(alpha=0.3), ax.legend(loc="lower right"), ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


GRID_CELL_INCHES = (1.6, 1.9)  # width, height of one image with its caption
GRID_DPI = 80


def retrieval_grid(rows: list[dict], path: str | Path) -> None:
    """rows: [{'image': RGB array, 'label': the query's class, 'matches': [(RGB array, class, score, correct)]}].
    One row per query: the query, then its matches framed green (correct class), red, or grey (correct None). The
    PNG is exactly (1 + most matches) x GRID_CELL_INCHES[0] by len(rows) x GRID_CELL_INCHES[1] inches at GRID_DPI."""
    cols = 1 + max((len(r["matches"]) for r in rows), default=0)
    w, h = GRID_CELL_INCHES
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * w, len(rows) * h), squeeze=False)
    for ax_row, r in zip(axes, rows):
        cells = [(r["image"], f"query\n{r['label']}", "black")]
        frame = {True: "limegreen", False: "red", None: "grey"}  # None: no truth to judge by (search-text)
        cells += [(img, f"{cls}\n{score:.3f}", frame[ok]) for img, cls, score, ok in r["matches"]]
        for ax in ax_row:
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
        for ax, (img, caption, color) in zip(ax_row, cells):
            ax.imshow(img)
            ax.set_title(caption, fontsize=7, pad=2)
            for s in ax.spines.values():
                s.set_visible(True), s.set_edgecolor(color), s.set_linewidth(1.5 if color == "black" else 4)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (len(rows) * h), wspace=0.08, hspace=0.45)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=GRID_DPI)
    plt.close(fig)


def ablation_bars(rows: list[dict], path: str | Path) -> None:
    """evaluate --ablate rows {trick, val_map5, delta}: horizontal bars of the change each trick makes alone."""
    rows = rows[1:]  # the first row is the baseline itself
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    deltas = [r["delta"] for r in rows]
    ax.barh(range(len(rows)), deltas, color=["C2" if d > 0 else "C3" for d in deltas])
    ax.set_yticks(range(len(rows)), [f"{r['trick']} ({r['val_map5']:.3f})" for r in rows])
    ax.invert_yaxis(), ax.axvline(0, color="k", lw=0.8), ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("Δ val MAP@5 vs no trick")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
