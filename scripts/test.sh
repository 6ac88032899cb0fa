#!/usr/bin/env bash
# Installs oga-npu with its test dependencies (into .venv) and runs the test suite.
# Extra arguments go to pytest (e.g. -m "not slow" to skip the real-SmolLM2 tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
set +e
python -m pytest "$@"
code=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here.
if [ "$code" -eq 5 ]; then
  echo "test.sh: pytest ran no tests" >&2
  exit 1
fi
exit "$code"
