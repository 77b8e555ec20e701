#!/usr/bin/env bash
# Command 1 of the README: install everything into ./.venv, then run the quickstart recipe on the
# embedded default models and print where the dataset is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/synth generate recipes/quickstart.yaml "$@"
