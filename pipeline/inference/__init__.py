"""Inference tricks that need more than the cached embeddings: the trick table, query orientation, class scores
from a classifier head."""
