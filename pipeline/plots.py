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
    for key in ("val_acc", "val_map5"):
        if any(r[key] != "" for r in rows):
            b.plot(ep, [float(r[key] or "nan") for r in rows], "o-", label=key)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend(), b.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
