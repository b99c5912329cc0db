#!/usr/bin/env bash
# One-click start: find Python 3.10-3.12, create .venv once, install requirements when they change,
# then run app.py with every other argument (e.g. ./launch.sh --preset tiny).
#   --setup-only   install and exit (used by tests/run.sh)
#   --reinstall    reinstall even if requirements.txt did not change
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

setup_only=0
reinstall=0
app_args=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) setup_only=1 ;;
    --reinstall) reinstall=1 ;;
    *) app_args+=("$arg") ;;
  esac
done

find_python() {
  for candidate in python3 python3.12 python3.11 python3.10 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! python="$(find_python)"; then
    echo "Cascade Studio needs Python 3.10, 3.11 or 3.12 (with venv). Install one, e.g." >&2
    echo "  Debian/Ubuntu: sudo apt-get install python3 python3-venv" >&2
    exit 1
  fi
  echo "Using $("$python" --version) at $(command -v "$python") to create .venv"
  "$python" -m venv "$venv"
fi

stamp="$venv/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ "$reinstall" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing requirements into .venv (first start takes a few minutes)..."
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r requirements.txt
  echo "$want" > "$stamp"
fi

if [ "$setup_only" = 1 ]; then
  exit 0
fi
exec "$venv/bin/python" app.py "${app_args[@]+"${app_args[@]}"}"
