"""Image-retrieval pipeline for Kaggle instance-identification competitions (Hotel-ID, landmarks, whales)."""
import os

# The hub's offline mode is set per stage by cli.py (pipeline/network.py); albumentations' update check never runs.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
