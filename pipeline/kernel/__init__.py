"""The offline Kaggle kernel package: its layout, builder, dependency wheels, offline check and its inference."""
