#!/usr/bin/env bash
# Installs oga-npu with its test dependencies (into .venv), checks the code with ruff (lint and
# format), runs the test suite, then the
# runtime tests on each onnxruntime-genai a Ryzen AI release pins (scripts/test_oga_versions.sh,
# a venv per version). Extra arguments go to pytest (e.g. -m "not slow" to skip the
# real-SmolLM2 tests); OGA_NPU_TEST_OGA_VERSIONS= (empty) skips the version venvs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# Lint and format first (seconds): a finding fails the run, after the tests have run too.
lint=0
ruff check --quiet . || { echo "test.sh: ruff check found problems (ruff check --fix . fixes most)" >&2; lint=1; }
ruff format --check --quiet . || { echo "test.sh: files not formatted (run: ruff format .)" >&2; lint=1; }
# The version venvs (mostly pip: network and disk) are built and tested beside the main suite
# (CPU): on 2 cores that saves most of their minutes. Their output follows the suite's.
vlog=""
if [ -n "${OGA_NPU_TEST_OGA_VERSIONS-default}" ]; then
  vlog="$(mktemp "${TMPDIR:-/tmp}/oga-npu-versions.XXXXXX")"
  bash "$ROOT/scripts/test_oga_versions.sh" > "$vlog" 2>&1 &
  vpid=$!
  trap 'kill "$vpid" 2>/dev/null || true; rm -f "$vlog"' EXIT  # kill fails once it has ended: not an error (set -e)
fi
set +e
python -m pytest "$@"
code=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here.
if [ "$code" -eq 5 ]; then
  echo "test.sh: pytest ran no tests" >&2
  code=1
fi
if [ -n "$vlog" ]; then
  set +e
  wait "$vpid"
  vcode=$?
  set -e
  cat "$vlog"
  if [ "$vcode" -ne 0 ]; then
    echo "test.sh: the onnxruntime-genai version tests failed (exit $vcode)" >&2
    [ "$code" -ne 0 ] || code="$vcode"
  fi
fi
[ "$code" -ne 0 ] || code="$lint"
exit "$code"
