"""The CLIP head (seed 002): head(image_embeddings, caption_tokens) -> the symmetric image-text contrastive loss,
with the text tower inside it, so a CLIP run is the usual loop with `head: clip` (the image side is the run's
backbone and neck, projection to 256-d in seed 002). The text tower is open_clip's TextTransformer on its BPE
tokens (EOT pooling) followed by a neck of model/necks.py NECKS; it trains from scratch unless `text_weights`
names an open_clip CLIP state dict whose text part it takes."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.core.errors import UserError

VOCAB = 49408  # open_clip's SimpleTokenizer (the BPE vocabulary it ships)


def tokenize(texts: list, context: int) -> np.ndarray:
    """int64 (n, context) BPE tokens (start, words, end; truncated to context with the end token kept)."""
    from open_clip.tokenizer import SimpleTokenizer

    if not texts:
        return np.zeros((0, context), np.int64)
    return SimpleTokenizer(context_length=context)(list(texts)).numpy().astype(np.int64)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float, soft_targets: bool = False):
    """Row i of image and text are a pair. logits = scale * text @ image.T; the loss is the mean of the
    cross-entropies text->images (rows) and image->texts (columns). Hard targets: the pair's own entry (CLIP).
    Soft (seed 002): softmax over the mean of the image-image and text-text similarities at the same scale, so two
    alike pairs are not pushed apart as hard negatives."""
    logits = scale * text @ image.t()
    if soft_targets:
        targets = F.softmax(scale * (image @ image.t() + text @ text.t()) / 2, dim=-1)
    else:
        targets = torch.eye(len(image), dtype=logits.dtype, device=logits.device)
    texts_loss = -(targets * F.log_softmax(logits, dim=1)).sum(1)
    images_loss = -(targets.t() * F.log_softmax(logits.t(), dim=1)).sum(1)
    return ((texts_loss + images_loss) / 2).mean()


class ClipHead(nn.Module):
    """HEADS entry `clip`; labels are caption tokens (text/captions.CaptionTargets), not class codes. The parameters
    under `text.encoder` are the text encoder (the optimiser's `text` group); the text neck and the temperature are
    the head's group."""

    def __init__(self, embedding_dim, num_classes, class_counts=None, context=77, width=512, layers=12, heads=8,
                 neck="projection", dropout=0.1, temperature=1.0, learn_temperature=False, normalize=False,
                 soft_targets=True, text_weights=""):
        super().__init__()
        from open_clip.transformer import TextTransformer

        from pipeline.model.necks import NECKS

        if neck not in NECKS:
            raise UserError(f"clip.neck={neck!r}: use one of {', '.join(NECKS)}")
        self.context, self.normalize, self.soft_targets = int(context), bool(normalize), bool(soft_targets)
        self.dim = embedding_dim
        self.text = nn.Module()
        self.text.encoder = TextTransformer(context_length=self.context, vocab_size=VOCAB, width=width, heads=heads,
                                            layers=layers, output_dim=None)
        self.text.neck = NECKS[neck](width, embedding_dim, dropout)
        self.source = "random init (no pretrained text tower is local)"
        if text_weights:
            self.source = load_text_weights(self.text.encoder, text_weights)
        log_scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(log_scale) if learn_temperature else None
        if self.log_scale is None:
            self.register_buffer("fixed_log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        log_scale = self.log_scale if self.log_scale is not None else self.fixed_log_scale
        return log_scale.clamp(max=math.log(100.0)).exp()  # CLIP's cap: logits beyond 100x destabilise training

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, D) text embeddings of (n, context) tokens, in the image embeddings' space (not normalised)."""
        return self.text.neck(self.text.encoder(tokens))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 2:
            raise UserError("head=clip trains on captions: its batches must hold caption tokens, not class codes")
        image, text = embeddings.float(), self.encode_text(labels).float()
        if self.normalize:
            image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
        return clip_loss(image, text, self.scale, self.soft_targets)


def load_text_weights(encoder: nn.Module, path: str) -> str:
    """Copy the text part of an open_clip CLIP state dict (token_embedding, positional_embedding, transformer.*,
    ln_final.*) into encoder; shapes must match the clip section's width/layers/heads/context."""
    from pathlib import Path

    if not Path(path).is_file():
        raise UserError(f"clip.text_weights={path}: file not found (an open_clip CLIP state dict), or set it to ''")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = encoder.state_dict()
    text = {k: v for k, v in state.items() if k in own and not k.startswith("text_projection")}
    bad = [k for k, v in text.items() if v.shape != own[k].shape]
    if not text or bad:
        raise UserError(f"clip.text_weights={path}: " + (f"'{bad[0]}' is {tuple(text[bad[0]].shape)}, the tower's "
                        f"{tuple(own[bad[0]].shape)}: match clip.width/layers/heads/context" if bad else
                        "holds no open_clip text tower (token_embedding, transformer.*)"))
    encoder.load_state_dict(text, strict=False)
    return f"text tower from {path} ({len(text)} tensors)"


@torch.inference_mode()
def encode_texts(head: ClipHead, texts: list, device: str, batch: int = 256) -> np.ndarray:
    """float32 (n, D) L2-normalised text embeddings (eval mode)."""
    was = head.training
    head.eval()
    tokens = torch.from_numpy(tokenize(texts, head.context))
    out = [F.normalize(head.encode_text(tokens[i:i + batch].to(device)).float(), dim=1).cpu()
           for i in range(0, len(tokens), batch)]
    head.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, head.dim), np.float32)
