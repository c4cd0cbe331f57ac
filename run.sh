#!/usr/bin/env bash
# The one entry point: ./run.sh <stage> [args]. Builds .venv from requirements.txt on first use.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
# pipeline/cli.py puts the hub offline for every stage but the network ones (weights, download, upload, submit,
# status). albumentations' update check never runs.
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "run.sh: setting up $venv from requirements.txt (first use; a few minutes)..." >&2
  python3 -m venv "$venv"
  log="$venv/pip-install.log"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -r "$here/requirements.txt" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "run.sh: installing requirements.txt failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
cd "$here"
exec "$venv/bin/python" -m pipeline "$@"
