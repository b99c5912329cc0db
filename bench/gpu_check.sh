#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR [--dry-run]
#
# The GPU checks of issue #15 as one command, in at most 9 minutes on a CUDA machine. Each group
# of scenarios is its own `python -m bench --device cuda --size real` run under its own time limit
# (a group that hangs or runs out of time costs only its slot); the results are then merged into
#   OUTDIR/gpu.json  every scenario's JSON, plus "steps": each group's exit code and seconds
#   OUTDIR/gpu.md    the printed tables
# and each group's own JSON and log stay in OUTDIR/parts/.
#
# Groups, in order of importance (the first gets the most time):
#   never_oom  every tab's default request under 8, 12 and 16 GB caps (completions, OOMs)
#   image      image_resident (ours / stock, all resident) and image_offload (8 and 12 GB budgets,
#              against ours resident and stock enable_model_cpu_offload)
#   switching  Image -> Video -> Image under a one-family budget: time to restore the prior
#   chat       our decode loop against generate() on the 1.6B shape
#   audio      Stable Audio Open, ours against StableAudioPipeline (10 s of sound, 20 steps)
#   compile    regional torch.compile of the prior's and decoder's blocks
#
# Needs (bench/README.md): bash, coreutils `timeout`, and a Python with requirements.txt and a CUDA
# build of torch installed (PYTHON=... picks it; default `python`). It installs and downloads
# nothing: the models are random-weight real architectures, built on the GPU (HF_HUB_OFFLINE=1).
#
# --dry-run (any machine, CI): print the commands the real run would run, then run all the same
# scenarios once on the CPU with the tiny models (--device cpu --size tiny --quick) and merge them
# into OUTDIR/gpu.json and OUTDIR/gpu.md exactly as the real run does.
set -u

usage() { echo "usage: bench/gpu_check.sh OUTDIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case $1 in -*) usage ;; esac
OUT=$1
shift
DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) usage ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
mkdir -p "$OUT/parts" || exit 2
OUT=$(cd "$OUT" && pwd)
PARTS=$OUT/parts
rm -f "$PARTS"/*.json "$PARTS"/*.rc "$PARTS"/*.log "$OUT/gpu.json" "$OUT/gpu.md"

#: The whole check's limit, and what is kept back for the merge at the end.
TOTAL_S=540
MERGE_S=30
DEADLINE=$((SECONDS + TOTAL_S - MERGE_S))

# name, seconds, then the scenario flags (after --device cuda --size real). The limits add up to
# TOTAL_S - MERGE_S; never_oom gets the most: its SVD default request (25 frames at 1024x576) is
# the longest job, three times. Not yet timed on a GPU: see bench/README.md.
STEPS=(
  "never_oom|270|--scenarios never_oom"
  "image|90|--scenarios image_resident,image_offload --vram-budget 8,12 --runs 3 --warmup 1"
  "switching|35|--scenarios switching --runs 3 --warmup 1"
  "chat|35|--scenarios chat --runs 3 --warmup 1 --tokens 128"
  "audio|30|--scenarios audio --runs 2 --warmup 1"
  "compile|50|--scenarios compile --runs 3 --warmup 1"
)

step() {  # step NAME LIMIT ARGS...: one `python -m bench` run under a time limit
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 5 ]; then
    echo "124 0" >"$PARTS/$name.rc"
    echo "gpu_check: $name skipped, no time left" | tee "$PARTS/$name.log"
    return
  fi
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$PYTHON" -m bench "$@" --out "$PARTS/$name.json" >"$PARTS/$name.log" 2>&1
  local rc=$?
  echo "$rc $((SECONDS - started))" >"$PARTS/$name.rc"
  echo "gpu_check: $name exit $rc after $((SECONDS - started)) s (limit $limit s)"
}

if [ "$DRY" = 1 ]; then
  echo "gpu_check --dry-run: on a CUDA machine this runs (each under its own time limit):"
  for entry in "${STEPS[@]}"; do
    IFS='|' read -r name limit flags <<<"$entry"
    echo "  timeout $limit $PYTHON -m bench --device cuda --size real $flags --out $PARTS/$name.json"
  done
  echo "gpu_check --dry-run: now the same scenarios once, tiny models on the CPU"
  # shellcheck disable=SC2086
  step dry_run 300 --device cpu --size tiny --quick \
    --scenarios never_oom,image_resident,image_offload,switching,chat,audio,compile
else
  if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "gpu_check: $PYTHON has no CUDA device (torch.cuda.is_available() is False); use --dry-run" >&2
    exit 3
  fi
  for entry in "${STEPS[@]}"; do
    IFS='|' read -r name limit flags <<<"$entry"
    # shellcheck disable=SC2086
    step "$name" "$limit" --device cuda --size real $flags
  done
fi

timeout "$MERGE_S" "$PYTHON" -m bench --merge "$PARTS" --out "$OUT/gpu.json" --table "$OUT/gpu.md" \
  >"$PARTS/merge.log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "gpu_check: merging failed (exit $rc); see $PARTS/merge.log" >&2
  exit "$rc"
fi
echo "gpu_check: wrote $OUT/gpu.json and $OUT/gpu.md"
failed=0
for file in "$PARTS"/*.rc; do
  read -r code _ <"$file"
  [ "$code" = 0 ] || failed=1
done
exit "$failed"
