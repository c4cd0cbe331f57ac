"""Image-retrieval pipeline for Kaggle instance-identification competitions (Hotel-ID, landmarks, whales)."""
import os

# The floors of the package, lowest first: a module imports only from its own floor or a lower one
# (tests/test_architecture.py), and the Kaggle kernel ships the floors up to inference, then kernel (kernel/spec.py).
# cli.py and __main__.py stand above them all.
FLOORS = ("core", "config", "data", "model", "retrieval", "inference", "reports", "text", "training", "experiments",
          "kernel", "kaggle", "stages")

# The hub's offline mode is set per stage by cli.py (pipeline/core/network.py); albumentations' update check never runs.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
