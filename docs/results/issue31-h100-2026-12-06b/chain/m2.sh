# M2: bench 1B (CPU: llama.cpp no-AMX + every recipe + probes; GPU: Vulkan vs WebGPU)
source .dev31/env.sh; source .dev31/chain.sh
el "bench 1B"
timeout ${T2:-560} $BVL --recipes $RECIPES,gguf-ggml-nospin --shape llama-3.2-1b --stage bench --reps ${REPS1:-3} 2>&1 | tee $OUT/m2.log | tail -70
el "bench 1B rc=${PIPESTATUS[0]}"; pack m2; el end
