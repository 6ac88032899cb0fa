source .dev31/env.sh
/tmp/vk/usr/bin/glslc --version | head -1 || echo "glslc does not run here"
python3 -c "import onnxruntime as o, onnxruntime_genai as g; print('ort', o.__version__, 'genai', g.__version__)"
python3 -m oga_npu devices 2>&1 | tail -4
el "setup 1B + 3B"
timeout 530 $BVL --shape llama-3.2-1b,llama-3.2-3b --stage setup 2>&1 | tee $OUT/c1.log | tail -40
el "setup rc=${PIPESTATUS[0]}"; pack c1; du -sh $W/*.gguf $W/llama-3.2-* 2>/dev/null; el end
