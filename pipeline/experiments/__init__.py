"""Experiments over trained runs: ensembles and their subsets, evaluation tables, the zero-shot row, trick
ablations, recipe comparisons, retrieval pictures and the demo."""
