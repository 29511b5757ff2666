#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install the pinned OpenMMLab stack.
# Idempotent: when everything already imports with the right versions it returns in seconds.
#
#   VENV=<dir>   where the environment lives (default: .venv in the repository root)
#   PYTHON=<exe> interpreter used to create it (default: python3)
#   TORCH=<ver>  torch release installed into a new environment (default: 2.13.0; 2.1.2 for the torch 2.1 CI lane)
#   NUMPY=<spec> numpy requirement (default: "<2.3"; torch 2.1 wheels need "<2")
#   MMCV_FROM_SOURCE=1  never take a prebuilt mmcv wheel from find-links: compile it against the installed torch
#                (pip's wheel cache keeps the build, so give each torch its own PIP_CACHE_DIR)
#
# mmcv 2.1.0 has no binary wheel on PyPI for current torch. pip's find-links (PIP_FIND_LINKS or pip.conf)
# is honoured, so a prebuilt wheel cache is used when one matches; otherwise mmcv is compiled from the sdist
# against the installed torch (about 15 minutes on 2 cores).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-2.13.0}"
NUMPY="${NUMPY:-<2.3}"
MMCV_FROM_SOURCE="${MMCV_FROM_SOURCE:-0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# setuptools stays < 81 in every step: mmengine 0.10.7 imports pkg_resources (removed in 82, deprecated loudly in 81).
PIP=("$PY" -m pip install --disable-pip-version-check -q "setuptools<81")

#: the linters `make lint` runs (the fast path below installs them into an environment made before they were added)
MYPY_VERSION=2.4.1
LINTERS=("flake8>=7.1,<8" "mypy==$MYPY_VERSION")
linters_ok() {
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('mypy') != '$MYPY_VERSION')" 2>/dev/null \
    && "$PY" -m flake8 --version >/dev/null 2>&1
}

# Fast path: everything present with the pinned versions and compiled mmcv ops that load.
if "$PY" "$ROOT/tools/check_env.py" --quiet 2>/dev/null; then
  if ! linters_ok; then
    echo "[setup] installing the linters"
    "${PIP[@]}" "${LINTERS[@]}"
  fi
  echo "[setup] environment OK ($VENV)"
  exit 0
fi

echo "[setup] installing build tools"
"${PIP[@]}" "setuptools<81" wheel packaging

if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch==$TORCH"
  "${PIP[@]}" "torch==$TORCH"
fi

echo "[setup] installing mmengine and pure-Python dependencies"
"${PIP[@]}" "mmengine==0.10.7" "numpy$NUMPY" einops pycocotools ftfy regex pytest matplotlib \
  scipy shapely terminaltables prettytable opencv-python-headless addict yapf rich termcolor ninja "${LINTERS[@]}" \
  "onnx==1.23.2" "onnxruntime==1.32.0" "onnxscript==0.7.2"

mmcv_ok() { "$PY" "$ROOT/tools/check_env.py" --only mmcv --quiet 2>/dev/null; }
if ! mmcv_ok; then
  echo "[setup] installing mmcv==2.1.0 (a wheel from find-links if one matches, else compiled from source)"
  MMCV_ARGS=(--no-build-isolation)
  [ "$MMCV_FROM_SOURCE" = 1 ] && MMCV_ARGS+=(--no-binary mmcv)
  MMCV_WITH_OPS=1 "${PIP[@]}" "${MMCV_ARGS[@]}" "mmcv==2.1.0"
  if ! mmcv_ok; then
    echo "[setup] mmcv.ops does not load against this torch; rebuilding mmcv from source"
    MMCV_WITH_OPS=1 "${PIP[@]}" --no-build-isolation --force-reinstall --no-deps --no-cache-dir \
      --no-binary mmcv "mmcv==2.1.0"
  fi
fi

echo "[setup] installing mmdet, mmsegmentation and mmsparse"
"${PIP[@]}" "mmdet==3.3.0" "mmsegmentation==1.2.2"
# A torchvision built for another torch breaks mmengine's runner at start-up; none is better.
if "$PY" -m pip show torchvision >/dev/null 2>&1 && ! "$PY" -c "import torchvision" 2>/dev/null; then
  echo "[setup] removing a torchvision that does not load against this torch"
  "$PY" -m pip uninstall -y -q torchvision
fi
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"

"$PY" "$ROOT/tools/check_env.py"
