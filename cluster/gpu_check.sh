#!/usr/bin/env bash
# The GPU check of issue 31 (docs/gpu.md): two `run` calls back to back, because the wheels and the model do not
# fit one call's 64 MiB together.
#
#   bash cluster/gpu_check.sh install        # run 1, carry .carry/wheels: the wheels into .gpu/site (an ignored
#                                            # folder that stays while the machine is warm, ~30 s), import check
#   bash cluster/gpu_check.sh run [FLAGS]    # run 2, carry .carry/model .carry/data: cluster/gpu_check.py run
#   bash cluster/gpu_check.sh run --cpu      # the same on a CPU machine with tiny sizes (the dry run)
#
#   PYTHON    the interpreter (default python3: on the GPU machine the one that holds torch)
#   OUT       where gpu_check.json and the logs go (set on the GPU machine; default .gpu/out)
#   GPU_SITE  where the wheels are installed (default .gpu/site)
#   WHEELS    the wheel folder (default .carry/wheels)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
SITE="${GPU_SITE:-$PWD/.gpu/site}"
WHEELS="${WHEELS:-$PWD/.carry/wheels}"
OUT="${OUT:-$PWD/.gpu/out}"
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
  RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # Ray's workers inherit it from `ray start`

cmd="${1:-}"
shift || true
case "$cmd" in
  install)
    ls "$WHEELS"/ray-*.whl >/dev/null 2>&1 || { echo "no Ray wheel in $WHEELS: carry .carry/wheels" >&2; exit 2; }
    rm -rf "$SITE"
    t0=$(date +%s)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee "$OUT/install.log" || exit 1
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/install.log"
    "$PYTHON" cluster/gpu_check.py install-check --out "$OUT" "$@" 2>&1 | tee -a "$OUT/install.log"
    exit "${PIPESTATUS[0]}"
    ;;
  run)
    [ -d "$SITE/ray" ] || { echo "$SITE/ray missing: run 'gpu_check.sh install' first (on the GPU machine: in the" \
      "call just before, while the machine is still warm)" >&2; exit 2; }
    "$PYTHON" cluster/gpu_check.py run --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
    ;;
  *)
    echo "usage: $0 install | run [--cpu] [gpu_check.py run flags]" >&2
    exit 2
    ;;
esac
