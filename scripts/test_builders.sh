#!/usr/bin/env bash
# The REAL public onnxruntime-genai model builders of each Ryzen AI release (0.9.2: 1.6,
# 0.11.2: 1.7/1.7.1, 0.14.0: 1.8) under AMD's transformers pin (4.57.6), plus 0.14.0 under
# transformers 5, read the folder oga-npu's quantize stage writes (tests/builders_check.py):
# the build ends without error, the RoPE cache is the source config's, the tokenizer loads.
# Called by scripts/test_oga_versions.sh (after the runtime tests); alone: bash scripts/test_builders.sh.
#
# The tiny models (scripts/make_builder_folders.py: Llama rope_theta 5e5, Llama llama3 scaling,
# Phi3 longrope) are quantized ONCE with the main venv. One venv holds what every builder needs
# (torch==2.13.0 CPU first, transformers==4.57.6, onnx, onnx-ir, onnxruntime: the wheels do not
# declare onnx-ir); each onnxruntime-genai version is a `pip install --no-deps --target` folder put
# first on PYTHONPATH (seconds each), so torch is installed once, not per version. Not the runtime
# venvs: transformers 4.57.6 needs huggingface-hub<1.0, below oga-npu's floor. 0.14.0 + transformers 5
# is the main venv with the 0.14.0 folder first on the path (nothing installed).
# `-e cpu` is used: the RoPE and tokenizer code is the same for -e dml, the EP AMD builds with.
#   OGA_NPU_TEST_BUILDERS   versions under transformers 4.57.6 (default: "0.9.2 0.11.2 0.14.0")
#   OGA_NPU_VERSION_VENVS   where the venv and folders live (default: .venv-oga)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${OGA_NPU_ENV_READY:-}" ]; then
  # shellcheck source=setup_env.sh
  . "$ROOT/scripts/setup_env.sh"
fi
cd "$ROOT"
VERSIONS="${OGA_NPU_TEST_BUILDERS:-0.9.2 0.11.2 0.14.0}"
BASE="${OGA_NPU_VERSION_VENVS:-$ROOT/.venv-oga}"
MAIN_PY="${OGA_NPU_MAIN_PY:-$(command -v python)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
unset PYTHONPATH
mkdir -p "$BASE"
fail() { echo "test_builders: $*" >&2; exit 1; }
t_start=$(date +%s)
took() { echo "test_builders: $1 took $(($(date +%s) - $2)) s" >&2; }

# 1. The quantized folders, once (rebuilt when what makes them changed).
src_hash="$(cat scripts/make_builder_folders.py oga_npu/prepare/quantize.py oga_npu/prepare/builder_compat.py \
  oga_npu/recipe.py | sha256sum | cut -c1-16)"
FOLDERS="$BASE/builder-folders"
if [ "$(cat "$FOLDERS/.stamp" 2>/dev/null)" != "$src_hash" ]; then
  t=$(date +%s); rm -rf "$FOLDERS"
  log="$BASE/builder-folders.log"
  "$MAIN_PY" scripts/make_builder_folders.py "$FOLDERS" > "$log" 2>&1 || { tail -20 "$log" >&2; fail "make_builder_folders.py failed"; }
  echo "$src_hash" > "$FOLDERS/.stamp"; took "quantizing the tiny models" "$t"
fi
export OGA_NPU_BUILDER_FOLDERS="$FOLDERS"

# 2. The builders' venv (transformers 4.57.6) and a folder per onnxruntime-genai version.
VENV="$BASE/builder-tf4"
want="$(cat scripts/test_builders.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$want" ]; then
  t=$(date +%s); rm -rf "$VENV" "$BASE"/builder-oga-*
  "$MAIN_PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q torch==2.13.0  # first: the CPU wheel (an unpinned torch pulls CUDA)
  "$VENV/bin/python" -m pip install -q transformers==4.57.6 onnx onnx-ir onnxruntime pytest
  echo "$want" > "$VENV/.stamp"; took "the builders' venv" "$t"
fi
run_check() {  # label, python, onnxruntime-genai folder, version
  local t; t=$(date +%s)
  set +e
  PYTHONPATH="$3" OGA_NPU_EXPECT_OGA="$4" "$2" -m pytest -q -p no:cacheprovider --noconftest tests/builders_check.py
  local code=$?
  set -e
  took "$1" "$t"
  [ "$code" -eq 0 ] || fail "tests/builders_check.py with the $1 builder exited $code"
}
for v in $VERSIONS 0.14.0; do
  d="$BASE/builder-oga-$v"
  [ -d "$d/onnxruntime_genai" ] || "$VENV/bin/python" -m pip install -q --no-deps --target "$d" "onnxruntime-genai==$v"
done

# 3. Each builder.
for v in $VERSIONS; do
  run_check "onnxruntime-genai $v + transformers 4.57.6" "$VENV/bin/python" "$BASE/builder-oga-$v" "$v"
done
run_check "onnxruntime-genai 0.14.0 + transformers 5" "$MAIN_PY" "$BASE/builder-oga-0.14.0" 0.14.0
took "all builder checks" "$t_start"
