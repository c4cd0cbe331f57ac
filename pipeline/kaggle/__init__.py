"""Kaggle: the submission file, the offline kernel package (spec, builder, offline check, the kernel itself), the
credential guard and the kaggle client."""
