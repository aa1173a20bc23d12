#!/usr/bin/env bash
# Create the virtual environment and install nrcc-scale with everything its tests use.
# torch/torchvision are pinned (pip finds them on local disk on the development machines; uv and poetry
# would download several GB). FFCV needs system libraries: installed with apt when running as root,
# otherwise skipped with a message (its tests then skip; the torchvision loader is the fallback).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[dev]"

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
  "$VENV/bin/python" -m pip install -q -e ".[ffcv]"
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
