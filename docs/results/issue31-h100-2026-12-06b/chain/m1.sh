# M1: setup of 1B + 3B: llama.cpp no-AMX + Vulkan builds, the ggml kernel library, files, prepares
source .dev31/env.sh; source .dev31/chain.sh
python3 -c "import onnxruntime as o, onnxruntime_genai as g; print('ort', o.__version__, 'genai', g.__version__)"
/tmp/vk/usr/bin/glslc --version | head -1; python3 -m oga_npu devices 2>&1 | tail -4
el "setup 1B + 3B"
timeout ${T1:-545} $BVL --recipes $RECIPES --shape llama-3.2-1b,llama-3.2-3b --stage setup 2>&1 | grep -v "source …" | tee $OUT/m1.log | tail -40
el "setup rc=${PIPESTATUS[0]}"; nospin; df -h / /dev/shm | cat; free -g | head -2; du -sh $W/*.gguf $W/llama-3.2-* 2>/dev/null
grep -h "" $W/out/logs/kernels-build.log | tail -3; ls -la $W/kernels/* 2>/dev/null | head; pack m1; el end
