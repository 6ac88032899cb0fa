# sourced by every call of the main chain (after env.sh)
RECIPES=${RECIPES:-gguf-native,gguf-ggml}
BVL="python3 scripts/bench_vs_llamacpp.py $W/out --work $W --llama-src $W/llama.cpp --tokenizer $W/tokenizer --no-native --small none --gpu --gpu-shapes ${GPU_SHAPES:-llama-3.2-1b} --gpu-recipes gguf-native --vulkan-prefix /tmp/vk/usr --builder-for Q4_K_M --builder-shapes ${BSHAPES:-llama-3.2-1b} --cache-dir /dev/shm/c --prepare-jobs ${PJ:-7,4}"
nospin() {  # gguf-ggml folders measured with the lead's recommended option too: ORT's workers sleep
python3 - <<'PY'
import json, os, shutil, subprocess
from pathlib import Path
for f in sorted(Path("/tmp/w").glob("*-gguf-ggml")):
    v = Path(str(f) + "-nospin")
    if not (f / "genai_config.json").exists() or (v / "genai_config.json").exists():
        continue
    subprocess.run(["cp", "-al", str(f), str(v)], check=True)
    c = json.loads((v / "genai_config.json").read_text()); (v / "genai_config.json").unlink()
    so = c["model"]["decoder"]["session_options"]
    so.setdefault("config_entries", {})["session.intra_op.allow_spinning"] = "0"
    (v / "genai_config.json").write_text(json.dumps(c, indent=2)); print("made", v.name, so)
PY
}
