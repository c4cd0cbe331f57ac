#!/usr/bin/env bash
# The GPU check of issue 14 (bench/gpu_check.py says what it measures): one JSON object on stdout, progress on
# stderr, under 8 minutes on one H200.
#   bash bench/gpu_check.sh            on a CUDA machine
#   bash bench/gpu_check.sh --cpu      every piece on the CPU, small: a smoke run of the check itself
#   bash bench/gpu_check.sh --only resume,rank
# Python: .venv/bin/python where there is one, else python3 (on the lent GPU machine, the one that holds torch).
# What that python lacks goes in .whl/ as wheels, installed to /tmp/site first (the JSON's missing_modules names
# what is still missing); for its Python 3.12, from requirements.txt's pins: albumentations albucore pydantic
# pydantic_core annotated-types typing-inspection simsimd stringzilla pytorch-metric-learning.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=.venv/bin/python
[[ -x $py ]] || py=python3
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >&2
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# no outer timeout: the script keeps to its --budget (420 s by default; each subprocess gets what is left)
exec "$py" bench/gpu_check.py "$@"
