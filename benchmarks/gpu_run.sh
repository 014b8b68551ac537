#!/usr/bin/env bash
# The prepared GPU run (issue 16): one command on one H200, results in ONE folder ($OUT, else
# benchmarks/results/gpu_run/). See benchmarks/gpu_run.py for what runs and in what order.
#
#   benchmarks/gpu_run.sh            # the GPU run, 8 minutes of wall time
#   benchmarks/gpu_run.sh --smoke    # the same sequence on a CPU at toy sizes, under 3 minutes
#
# Installs nothing it does not need: headct runs from src/ (PYTHONPATH); Python packages that the
# machine lacks (pydicom, pylibjpeg, grad-cam, ...) are installed from the wheels in .whl/ (fetched
# beforehand by benchmarks/gpu_wheels.sh) into a private folder, and only when an import fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import pydicom, pylibjpeg, libjpeg, openjpeg, rle, pytorch_grad_cam, ttach" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "gpu_run.sh: installing the missing packages from .whl/ into /tmp/headct-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/headct-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/headct-site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_run.py "$@"
