#!/usr/bin/env bash
# The test command of the README and CI: set up .venv (through launch.sh, Ray Serve included), add the test
# dependencies and Debian's Chromium for the browser tests, then run pytest on CPU, offline.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash launch.sh --setup-only --cluster local  # --cluster: Ray Serve too, for tests/test_cluster.py
.venv/bin/python -m pip install --quiet -r tests/requirements.txt
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "The browser tests need Debian's Chromium: sudo apt-get install -y chromium" >&2
    exit 1
  fi
fi
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"
