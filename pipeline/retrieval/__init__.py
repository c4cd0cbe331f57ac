"""Retrieval: cached embeddings and the forward passes that make them, nearest-row search, the per-class ranking
engine, the inference tricks, predictions and metrics."""
