"""Pictures a person would rather look at than a CSV."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path  # noqa: E402


def training_curves(rows, path, title=""):
    """rows: metrics.csv rows (dicts). Loss on the left, val accuracy and MAP@5 on the right."""
    ep = [int(r["epoch"]) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(ep, [float(r["train_loss"]) for r in rows], "o-", label="train loss")
    if any(r["val_loss"] != "" for r in rows):
        a.plot(ep, [float(r["val_loss"] or "nan") for r in rows], "o-", label="val loss")
    a.set_xlabel("epoch"), a.legend(), a.grid(alpha=0.3)
    for key in ("val_acc", "val_map5", "ema_val_map5"):
        if any(r.get(key, "") != "" for r in rows):
            b.plot(ep, [float(r[key] or "nan") for r in rows], "o-", label=key)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def compare_bars(summary, metric, path):
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
