"""Image-text training (seed 002): captions, the text tower, the CLIP head and text-to-image search."""
