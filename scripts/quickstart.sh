#!/usr/bin/env bash
# The main job on a fresh machine: install, prepare the bundled SmolLM2-135M-Instruct for
# the CPU, and ask it a question. Extra arguments go to `oga-npu prepare`
# (e.g. --recipe default for Quark AWQ instead of the GGUF's own blocks). The model folder is prepare's default
# in the model store (this checkout's models/, or $OGA_NPU_MODELS): <name>-q4_1-cpu, -<recipe> added
# for another recipe, so runs with different recipes never collide.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
echo "quickstart: [1/3] the Python environment (first run: a few minutes of pip)" >&2
# shellcheck source=setup_env.sh
. "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
GGUF="$(python -m oga_npu.demo)"
echo "quickstart: [2/3] prepare $(basename "$GGUF") for the CPU (prepare prints each stage)" >&2
MODEL="$(oga-npu prepare "$GGUF" "$@")"
Q="What is the capital of France? Answer in one sentence."
echo "quickstart: [3/3] ask it" >&2
echo "Q: $Q" >&2
oga-npu run -m "$MODEL" "$Q" --timings
echo "Model: $MODEL" >&2
NAME="$MODEL"
if [ "$(dirname "$MODEL")" = "$(oga-npu models --where)" ]; then NAME="$(basename "$MODEL")"; fi
echo "Chat with it (in any directory): . $VIRTUAL_ENV/bin/activate && oga-npu chat -m $NAME" >&2
