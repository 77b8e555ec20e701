#!/usr/bin/env bash
# Command 2 of the README: install everything into ./.venv, lint, then run the test suite
# on the real bundled models (vLLM engine on CPU, MiniLM). This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Converted models live inside the clone for tests, so CI depends on nothing outside it.
export SYNTH_HOME="${SYNTH_HOME:-$PWD/.synth-cache}"
.venv/bin/ruff check .
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
