"""The embedding model: the timm backbone and its pretrained weights, pooling and necks, and the heads/losses."""
