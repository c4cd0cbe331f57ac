"""Image-retrieval pipeline for Kaggle instance-identification competitions (Hotel-ID, landmarks, whales)."""
import os

# Nothing may reach the network at run time, however the package is entered.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
