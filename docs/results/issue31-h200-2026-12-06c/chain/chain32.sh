# The whole issue-31 chain, resumable: every stage skips what is done. Run in the background by
# c.sh (setsid), so that no one call's 600 s limit cuts it; each call waits on it and packs $W/out.
source .dev31/env.sh
# GPU=1: also llama.cpp Vulkan against --target webgpu at 1B (Q4_K_M)
[ -n "$GPU" ] && GPU="--gpu --gpu-recipes gguf-native --gpu-quants Q4_K_M --gpu-shapes llama-3.2-1b --vulkan-prefix /tmp/vk/usr"
BVL="python3 scripts/bench_vs_llamacpp.py $W/out --work $W --llama-src $W/llama.cpp --tokenizer $W/tokenizer
 --no-native --small none --recipes gguf-native,gguf-ggml --builder-for none $GPU --cache-dir /dev/shm/c
 --lengths ${LENGTHS:-128,512,1024} --gen ${GEN:-64} --reps ${REPS:-2} --probe-quants Q4_K_M"
step() { el "BEGIN $*"; "$@"; el "END rc=$? $1 $2 $3"; }
python3 -c "import onnxruntime as o, onnxruntime_genai as g; print('ort', o.__version__, 'genai', g.__version__)"
step $BVL --shape llama-3.2-1b,llama-3.2-3b --stage files
step $BVL --shape llama-3.2-1b --stage setup --prepare-jobs 6
free -g | head -2; df -h / /dev/shm | cat
$BVL --shape llama-3.2-1b --stage bench > $W/out/bench-1b.txt 2>&1; el "bench 1B rc=$?"
step $BVL --shape llama-3.2-3b --stage setup --prepare-jobs 4 --recipes ${RECIPES3:-gguf-ggml} --quants ${QUANTS3:-Q4_K_M,Q4_0}
free -g | head -2; df -h / /dev/shm | cat; du -sm $W/llama-3.2-* $W/*.gguf 2>/dev/null
$BVL --shape llama-3.2-3b --stage bench --recipes ${RECIPES3:-gguf-ggml} --quants ${QUANTS3:-Q4_K_M,Q4_0} --lengths ${LENGTHS3:-128,1024} --no-probe > $W/out/bench-3b.txt 2>&1; el "bench 3B rc=$?"
touch $W/CHAIN_DONE; el "chain done"
