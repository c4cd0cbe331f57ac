"""Kaggle: the submission file format, the credential guard and the kaggle client (upload, status, download,
submit)."""
