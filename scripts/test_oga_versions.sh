#!/usr/bin/env bash
# The runtime tests on each onnxruntime-genai a supported Ryzen AI release pins (0.9.2: 1.6,
# 0.11.2: 1.7/1.7.1, 0.14.0: 1.8), each in its own venv, plus the recipe folders on 0.18 here.
# Called by scripts/test.sh after the main suite; run it alone the same way (it sources
# setup_env.sh). The folders are prepared ONCE with the main venv (prepare needs 0.18's
# builder); the other venvs hold only the runtime: onnxruntime-genai==X installed first, then
# `pip install -e ".[ryzenai]" pytest`, which must install no onnxruntime* over it (checked). For
# 0.14.0 a stub distribution named onnxruntime-genai-directml-ryzenai stands in for AMD's (it must
# stay, and the cpu extra's dry run must show the public 0.18 runtime going in: the check can fail).
#   OGA_NPU_TEST_OGA_VERSIONS   versions to test (default: "0.9.2 0.11.2 0.14.0")
#   OGA_NPU_TEST_BUILDERS       builder versions for scripts/test_builders.sh (empty: skip it)
#   OGA_NPU_VERSION_VENVS       where the venvs and folders live (default: .venv-oga; reused
#                               while pyproject.toml and the sources they are built from match)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${OGA_NPU_ENV_READY:-}" ]; then  # test.sh has done it already
  # shellcheck source=setup_env.sh
  . "$ROOT/scripts/setup_env.sh"
fi
cd "$ROOT"
VERSIONS="${OGA_NPU_TEST_OGA_VERSIONS:-0.9.2 0.11.2 0.14.0}"
BASE="${OGA_NPU_VERSION_VENVS:-$ROOT/.venv-oga}"
mkdir -p "$BASE"
MAIN_PY="$(command -v python)"
export PIP_DISABLE_PIP_VERSION_CHECK=1
unset PYTHONPATH  # each venv imports its own editable install (a checkout on the path shadows the venv's metadata)

fail() { echo "test_oga_versions: $*" >&2; exit 1; }

# pytest exit 5 = no tests collected: a failure here, like any other non-zero code.
run_pytest() {  # python, then pytest arguments
  local py="$1"; shift
  set +e
  "$py" -m pytest -q -p no:cacheprovider "$@"
  local code=$?
  set -e
  [ "$code" -eq 0 ] || fail "pytest $* with $("$py" -c 'import onnxruntime_genai as o; print(o.__version__)' 2>/dev/null || echo '?') exited $code"
}

# 1. The folders, once, by the main venv; rebuilt when what makes them changed.
src_hash="$(cat pyproject.toml oga_npu/recipes/*.toml scripts/make_version_folders.py tests/conftest.py tests/gguf_models.py \
  $(find oga_npu -name '*.py' | sort) | sha256sum | cut -c1-16)"
FOLDERS="$BASE/folders"
if [ "$(cat "$FOLDERS/.stamp" 2>/dev/null)" != "$src_hash" ]; then
  rm -rf "$FOLDERS"
  echo "test_oga_versions: preparing each recipe's tiny folder (main venv)" >&2
  "$MAIN_PY" scripts/make_version_folders.py "$FOLDERS" > /dev/null
  echo "$src_hash" > "$FOLDERS/.stamp"
fi
[ -f "$FOLDERS/folders.json" ] || fail "no $FOLDERS/folders.json"
export OGA_NPU_VERSION_FOLDERS="$FOLDERS"

# 2. 0.18 (the main venv): the recipe folders (the runtime tests ran in the main suite).
run_pytest "$MAIN_PY" tests/oga_versions_check.py

# 3. Each pinned version in its own venv.
pyproject_hash="$(cat pyproject.toml scripts/test_oga_versions.sh scripts/make_stub_wheel.py | sha256sum | cut -c1-16)"
for v in $VERSIONS; do
  venv="$BASE/$v"
  want="$v-$pyproject_hash"
  if [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    echo "test_oga_versions: venv for onnxruntime-genai $v" >&2
    "$MAIN_PY" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "onnxruntime-genai==$v"
    if [ "$v" = "0.14.0" ]; then  # AMD's distribution name, as in a Ryzen AI 1.8 env
      wheel="$("$MAIN_PY" scripts/make_stub_wheel.py onnxruntime-genai-directml-ryzenai "$v" "$BASE/stub")"
      "$venv/bin/python" -m pip install -q --no-deps --no-index "$wheel"
    fi
    before="$("$venv/bin/python" -m pip list --format=freeze | grep -i '^onnxruntime' | sort)"
    log="$BASE/install-$v.log"
    "$venv/bin/python" -m pip install -e "$ROOT[ryzenai]" pytest > "$log" 2>&1 || { tail -20 "$log" >&2; fail "pip install -e .[ryzenai] failed for $v"; }
    after="$("$venv/bin/python" -m pip list --format=freeze | grep -i '^onnxruntime' | sort)"
    [ "$before" = "$after" ] || fail "pip install .[ryzenai] changed the runtime for $v: before [$before] after [$after]"
    if grep -i '^Successfully installed' "$log" | tr ' ' '\n' | grep -qi '^onnxruntime'; then
      fail "pip install .[ryzenai] installed an onnxruntime package for $v (see $log)"
    fi
    grep -qi "onnxruntime-genai==$v" <<< "$after" || fail "onnxruntime-genai $v is not installed in $venv: [$after]"
    if [ "$v" = "0.14.0" ]; then
      # AMD's distribution is still there beside it, and the check above can fail: the cpu
      # extra, asked the same way, would put the public 0.18 runtime in.
      grep -qi "^onnxruntime-genai-directml-ryzenai==$v$" <<< "$after" || fail "the stub AMD distribution is gone from $venv: [$after]"
      "$venv/bin/python" -m pip install -q --dry-run --report "$BASE/cpu-plan-$v.json" -e "$ROOT[cpu]" > /dev/null \
        || fail "pip install --dry-run -e .[cpu] failed for $v"
      cpu_runtime="$("$MAIN_PY" -c 'import json, sys
plan = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print(plan.get("onnxruntime-genai", ""))' "$BASE/cpu-plan-$v.json")"
      [[ "$cpu_runtime" == 0.18* ]] || fail "the cpu extra would not install onnxruntime-genai 0.18 into $venv (plan: [$cpu_runtime]): the ryzenai check above proves nothing"
    fi
    echo "$want" > "$venv/.stamp"
  fi
  echo "test_oga_versions: onnxruntime-genai $v" >&2
  dist=onnxruntime-genai; [ "$v" != "0.14.0" ] || dist=onnxruntime-genai-directml-ryzenai
  OGA_NPU_EXPECT_OGA="$v" OGA_NPU_EXPECT_DIST="$dist" run_pytest "$venv/bin/python" tests/test_oga_runtime.py tests/oga_versions_check.py
done
# 4. The real model builders of each release read the quantized folder (scripts/test_builders.sh).
[ -z "${OGA_NPU_TEST_BUILDERS-default}" ] || OGA_NPU_ENV_READY=1 OGA_NPU_MAIN_PY="$MAIN_PY" bash scripts/test_builders.sh
echo "test_oga_versions: runtime tests passed on onnxruntime-genai $VERSIONS and the recipe folders on $("$MAIN_PY" -c 'import onnxruntime_genai as o; print(o.__version__)')" >&2
