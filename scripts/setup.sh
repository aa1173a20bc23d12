#!/usr/bin/env bash
# Create the virtual environment and install nrcc-scale with everything its tests use.
# The tested torch/torchvision come from constraints.txt (pip finds them on local disk on the development
# machines; uv and poetry would download several GB). The `gpu` extra (cuML, cuVS, faiss-gpu) is installed
# when a CUDA device is visible (nvidia-smi lists one, or torch sees one), else the `cpu` extra (faiss-cpu):
# never both, they install the same `faiss` module. NRCC_EXTRA=cpu|gpu overrides the choice.
# FFCV needs system libraries: installed with apt when running as root, otherwise skipped with a message (its tests then skip; the torchvision loader is the fallback).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
PIP=("$VENV/bin/python" -m pip install -q -c constraints.txt)
"${PIP[@]}" torch torchvision

cuda_visible() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    return 0
  fi
  "$VENV/bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null
}
EXTRA=${NRCC_EXTRA:-}
if [ -z "$EXTRA" ]; then
  if cuda_visible; then EXTRA=gpu; else EXTRA=cpu; fi
fi
echo "installing nrcc-scale[$EXTRA,dev] (set NRCC_EXTRA=cpu|gpu to choose)"
"${PIP[@]}" -e ".[$EXTRA,dev]"

ffcv_libs_present() {
  pkg-config --exists opencv4 libturbojpeg 2>/dev/null
}
if ! ffcv_libs_present; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing FFCV's system libraries (pkg-config libturbojpeg0-dev libopencv-dev) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq pkg-config libturbojpeg0-dev libopencv-dev >/dev/null
  else
    echo "note: FFCV's system libraries are missing and this is not root; skipping ffcv" \
         "(apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev, then re-run)"
  fi
fi
# report.html is checked in headless Chromium by the tests (tests/test_label_free.py; they skip without it)
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing chromium (headless rendering test of report.html) ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is missing and this is not root; the report.html rendering test will skip" \
         "(apt-get install -y chromium, then re-run)"
  fi
fi
if ffcv_libs_present; then
  "${PIP[@]}" -e ".[ffcv]"
fi
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "ray", "timm", "umap", "faiss", "sklearn"):
    importlib.import_module(name)
try:
    import ffcv  # noqa: F401
    print("set-up complete (ffcv available)")
except Exception:
    print("set-up complete (ffcv not available: FFCV tests will skip)")
PY
