#!/usr/bin/env bash
# CI's second lane: the OpenMMLab GPU stack most mmdet 3.3 / mmseg 1.2 users have, run on CPU.
#
# torch 2.1.2 (PyPI's build, the CUDA one; it runs on CPU), numpy < 2, mmengine 0.10.7, mmcv 2.1.0 compiled against
# that torch, mmdet 3.3.0, mmseg 1.2.2, in .venv-torch21 (tools/setup_env.sh with TORCH/NUMPY set). Then the tests
# whose code paths depend on the torch version: operators, models (full-size logits included), converters,
# checkpoint loading and the compat shims, bad input, configs, and one training step + test batch of a Mask R-CNN
# and a UPerNet config. The other long training tests run on the main lane only.
#
#   VENV_TORCH21=<dir>        where the environment lives (default: .venv-torch21 in the repository root)
#   PIP_CACHE_DIR_TORCH21=<dir> pip cache of this lane (default: ~/.cache/pip-torch21). It is kept apart from the
#                             main lane's because pip's wheel cache does not key a compiled mmcv by the torch it was
#                             built against; with its own cache, only the first run compiles mmcv (~15-30 minutes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
VENV="${VENV_TORCH21:-$ROOT/.venv-torch21}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR_TORCH21:-$HOME/.cache/pip-torch21}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
start=$(date +%s)

# MMCV_FROM_SOURCE: a prebuilt mmcv wheel offered through find-links is for the main lane's torch, not this one
VENV="$VENV" TORCH=2.1.2 NUMPY="<2" MMCV_FROM_SOURCE=1 bash tools/setup_env.sh
PY="$VENV/bin/python"
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.1.2') else 'torch ' + torch.__version__)"
"$PY" tools/check_env.py  # the pinned stack, mmcv.ops compiled against this torch
# an environment kept from an earlier run links another checkout: link this one
"$PY" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e "$ROOT"
"$PY" -c "import mmsparse, os, sys; sys.exit(0 if mmsparse.__file__.startswith(os.getcwd()) else mmsparse.__file__)"
echo "[torch21] environment ready after $(( $(date +%s) - start )) s"

"$PY" -m pytest -q -ra -m 'not slow' \
  tests/test_ops tests/test_models tests/test_converters tests/test_utils tests/test_configs \
  tests/test_bad_inputs.py tests/test_tools/test_check_env.py
"$PY" -m pytest -q -ra tests/test_models/test_full_size_logits.py
"$PY" -m pytest -q -ra tests/test_models/test_cloformer.py::test_config_smoke_train_and_test \
  -k 'maskrcnn_cloformer_xxs_coco or upernet_cloformer_xxs_ade20k'
echo "[torch21] lane passed in $(( $(date +%s) - start )) s"
