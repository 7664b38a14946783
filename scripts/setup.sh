#!/usr/bin/env bash
# Set up facefit in a virtual environment (.venv by default) from PyPI wheels only.
# Usage: bash scripts/setup.sh [VENV_DIR]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
# torch/torchvision: any recent release; on the facefit dev machines pip takes
# torch 2.14.1 + torchvision 0.29.1 (a CUDA build that also runs on the CPU) from local disk.
# --only-binary :all: : wheels only, nothing is compiled on the user's machine (facefit
# itself is pure Python and is the only package built, as an editable install).
"$venv/bin/python" -m pip install -q --only-binary :all: -e "$here[test]"
# facenet-pytorch pins torch<2.3 and numpy<2 although it works with newer ones;
# install it without its pins (it provides MTCNN and the FaceNet architecture).
"$venv/bin/python" -m pip install -q --only-binary :all: --no-deps "facenet-pytorch==2.6.0"
"$venv/bin/facefit" --version
