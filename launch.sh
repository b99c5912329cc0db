#!/usr/bin/env bash
# Cascade Studio one-click start (Linux and macOS). launch.bat mirrors it step for step.
#
#   ./launch.sh [--reinstall] [--setup-only] [app.py flags...]
#
# 1. find Python 3.10-3.12     2. create .venv once
# 3. install PyTorch for this machine (CUDA build matching the NVIDIA driver, else CPU)
# 4. install requirements.txt  (steps 3-4 only when requirements.txt changed: a hash stamp),
#    and requirements-cluster.txt (Ray Serve) when --cluster is given
# 5. run app.py with every other argument
#   --reinstall    install again even if requirements.txt did not change
#   --setup-only   install and exit (tests/run.sh uses it)
#   --which-torch  print which PyTorch wheel index this machine gets, and exit
# Environment: STUDIO_TORCH_INDEX=URL forces PyTorch's wheel index (or "default" for PyPI).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

# ---- options ------------------------------------------------------------------------------
setup_only=0
reinstall=0
which_torch=0
app_args=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) setup_only=1 ;;
    --reinstall) reinstall=1 ;;
    --which-torch) which_torch=1 ;;
    *) app_args+=("$arg") ;;
  esac
done

# ---- 1. Python ----------------------------------------------------------------------------
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

# ---- which PyTorch build fits this machine (step 3 uses it) -------------------------------
torch_index() {
  # PyTorch's own wheel index for the newest CUDA the NVIDIA driver supports; empty for PyPI.
  if [ -n "${STUDIO_TORCH_INDEX:-}" ]; then
    [ "$STUDIO_TORCH_INDEX" = default ] || echo "$STUDIO_TORCH_INDEX"
    return 0
  fi
  if [ "$(uname -s)" = Darwin ]; then
    return 0  # PyPI's macOS wheels are the right ones (CPU and Apple GPU)
  fi
  local cuda=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    cuda="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
  fi
  if [ -z "$cuda" ]; then
    echo "No NVIDIA driver found: installing the CPU build of PyTorch." >&2
    echo "https://download.pytorch.org/whl/cpu"
    return 0
  fi
  local major="${cuda%%.*}" minor="${cuda#*.}" tag=""
  if [ "$major" -ge 13 ]; then tag=cu130
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 8 ]; then tag=cu128
  elif [ "$major" -eq 12 ] && [ "$minor" -ge 6 ]; then tag=cu126
  fi
  if [ -z "$tag" ]; then
    echo "The NVIDIA driver supports CUDA $cuda, older than PyTorch's builds need (12.6)." >&2
    echo "Update the driver for GPU speed; installing the CPU build for now." >&2
    echo "https://download.pytorch.org/whl/cpu"
    return 0
  fi
  echo "NVIDIA driver supports CUDA $cuda: installing PyTorch's $tag build." >&2
  echo "https://download.pytorch.org/whl/$tag"
}

if [ "$which_torch" = 1 ]; then
  echo "PyTorch index: $(torch_index || true)"
  exit 0
fi

# ---- 2. virtual environment ---------------------------------------------------------------
venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! python="$(find_python)"; then
    echo "Cascade Studio needs Python 3.10, 3.11 or 3.12 (with venv); none was found." >&2
    echo "  Debian/Ubuntu: sudo apt-get install python3 python3-venv" >&2
    echo "  macOS: brew install python@3.12, or the installer from python.org" >&2
    exit 1
  fi
  echo "Found $("$python" --version 2>&1) at $(command -v "$python"); creating .venv"
  "$python" -m venv "$venv"
else
  echo "Using .venv ($("$venv/bin/python" --version 2>&1))"
fi
pip=("$venv/bin/python" -m pip)

stamp="$venv/.requirements.sha256"
want="$(cat requirements.txt launch.sh | sha256sum | cut -d' ' -f1)"
if [ "$reinstall" = 1 ] || [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # ---- 3. PyTorch for this machine --------------------------------------------------------
  echo "Installing into .venv (the first start takes a few minutes)..."
  "${pip[@]}" install --quiet --upgrade pip
  torch_pin="$(grep -E '^torch==' requirements.txt)"
  index="$(torch_index)"
  if [ -n "$index" ]; then
    if ! "${pip[@]}" install --quiet --retries 1 "$torch_pin" --index-url "$index"; then
      echo "PyTorch's index ($index) could not be used; taking $torch_pin from the default index." >&2
    fi
  fi
  # ---- 4. everything else -----------------------------------------------------------------
  "${pip[@]}" install --quiet -r requirements.txt
  echo "$want" > "$stamp"
  echo "Installed. Later starts skip this step (use --reinstall to force it)."
else
  echo "Requirements unchanged since the last install: skipping it."
fi

# ---- 4b. Ray Serve, only for --cluster (the embedded app never needs it) -------------------
wants_cluster=0
[ -n "${STUDIO_CLUSTER:-}" ] && wants_cluster=1
for arg in "${app_args[@]+"${app_args[@]}"}"; do
  case "$arg" in --cluster|--cluster=*) wants_cluster=1 ;; esac
done
if [ "$wants_cluster" = 1 ]; then
  cluster_stamp="$venv/.cluster.sha256"
  cluster_want="$(sha256sum requirements-cluster.txt | cut -d' ' -f1)"
  if [ "$reinstall" = 1 ] || [ ! -f "$cluster_stamp" ] || [ "$(cat "$cluster_stamp")" != "$cluster_want" ]; then
    echo "Installing Ray Serve for --cluster (requirements-cluster.txt)..."
    "${pip[@]}" install --quiet -r requirements-cluster.txt
    echo "$cluster_want" > "$cluster_stamp"
  fi
fi

if [ "$setup_only" = 1 ]; then
  exit 0
fi

# ---- 5. the app (it prints the local URL, and the LAN URLs with --listen) -----------------
exec "$venv/bin/python" app.py "${app_args[@]+"${app_args[@]}"}"
