#!/usr/bin/env bash
# The GPU check of issues 14 and 25 (bench/gpu_check.py says what it measures) and bench/backbones.py: one JSON object
# on stdout, progress on stderr, about 8 minutes on one H100 or H200 (gpu_check.py's --budget, 420 s, then at most 75 s
# of backbones; a piece the budget cannot fit says so in its entry: run it again with --only).
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
# bench/backbones.py (seed 001's five backbones, img/s at 224 px) runs after gpu_check.py's pieces, 1 s per backbone
# and precision (fp16 and fp32 on CUDA, fp32 with --cpu), at most 75 s; its JSON joins theirs as pieces.backbones.
# It is skipped when --only names other pieces only.
backbones=1 cpu= prev=
for a in "$@"; do
  [[ $prev == --only && ,$a, != *,backbones,* ]] && backbones=
  case $a in
    --only=*) [[ ,${a#--only=}, == *,backbones,* ]] || backbones= ;;
    --cpu) cpu=1 ;;
    -h|--help) backbones= ;;
  esac
  prev=$a
done
# no outer timeout: the script keeps to its --budget (420 s by default; each subprocess gets what is left)
[[ -n $backbones ]] || exec "$py" bench/gpu_check.py "$@"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" bench/gpu_check.py "$@" >"$tmp/check.json" || { rc=$?; cat "$tmp/check.json"; exit "$rc"; }
t=$SECONDS
echo "gpu_check: backbones" >&2
device=auto
[[ -z $cpu ]] || device=cpu
timeout 75 "$py" bench/backbones.py --device "$device" --seconds 1 >"$tmp/backbones.json" ||
  echo "{\"error\": \"bench/backbones.py: exit status $? (75 s limit)\"}" >"$tmp/backbones.json"
"$py" - "$tmp" "$((SECONDS - t))" <<'PY'
import json, sys
from pathlib import Path

check, bench = (json.loads((Path(sys.argv[1]) / f).read_text()) for f in ("check.json", "backbones.json"))
check["pieces"]["backbones"] = {**bench, "seconds": float(sys.argv[2])}
check["seconds"] = round(check["seconds"] + float(sys.argv[2]), 1)
print(json.dumps(check, indent=1, default=str))
PY
