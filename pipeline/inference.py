"""Forward passes that turn images into L2-normalised embeddings (shared by training's validation and embed)."""
import numpy as np
import torch
import torch.nn.functional as F

from .data.dataset import ImageDataset, loader


def pick_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def autocast(device, enabled):
    # Mixed precision only on CUDA: bf16/fp16 on this kind of CPU is 10-300x slower than fp32.
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled and device == "cuda")


@torch.no_grad()
def embed_items(model, items, transform, cfg, device, head=None, codes=None, progress=None):
    """(embeddings float16 (n, E) L2-normalised, logits-or-None). Sample i is augmented with seed i, so a
    random transform (the validation mask) is the same on every call."""
    model.eval()
    ds = ImageDataset(items, transform, codes)
    dl = loader(ds, batch_size=cfg["eval_batch_size"], num_workers=cfg["num_workers"], device=device)
    out, losses, correct = [], [], 0
    logits = getattr(head, "logits", None)  # pair losses (supcon, triplet) have no classes to score
    for x, y in dl:
        x = x.to(device, non_blocking=True)
        if cfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg["amp"]):
            e = model(x).float()
        if head is not None:
            y = y.to(device)
            losses.append(head(e, y).item() * len(y))
            if logits is not None:
                correct += (logits(e).argmax(1) == y).sum().item()
        out.append(F.normalize(e, dim=1).cpu().numpy().astype(np.float16))
        if progress:
            progress(len(x))
    emb = np.concatenate(out) if out else np.zeros((0, 0), np.float16)
    stats = None
    if head is not None and items:
        stats = {"loss": sum(losses) / len(items), "acc": correct / len(items) if logits is not None else None}
    return emb, stats
