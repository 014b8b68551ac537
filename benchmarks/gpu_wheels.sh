#!/usr/bin/env bash
# Fetch, HERE (where pip reaches PyPI), the wheels that the H200 image lacks, into .whl/ (git-ignored),
# for Python 3.12 on x86-64 Linux. The device call then carries them: run(carry=[".whl"], ...), and
# benchmarks/gpu_run.sh installs them into /tmp/headct-site only when an import fails there.
# The image already holds torch, timm, numpy, scipy, scikit-learn, matplotlib, pillow, safetensors,
# pyyaml, tqdm, opencv (see the device notes); these are what headct needs on top.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLATFORMS=""
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS="$PLATFORMS --platform $p"
done
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
  -d .whl \
  pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-openjpeg==2.6.0 pylibjpeg-rle==2.2.0 \
  ttach==0.0.3 nibabel==5.4.2
# grad-cam is published as a source archive only; it is pure Python, so a wheel built here runs there
"$PY" -m pip wheel --no-deps -q -w .whl grad-cam==1.5.7
du -sh .whl
