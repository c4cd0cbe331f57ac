"""Competition data: layouts, folds (with the train/validation split), samplers, datasets, transforms, images, the
embedded synthetic dataset."""
