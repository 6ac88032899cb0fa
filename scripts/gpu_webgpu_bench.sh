#!/usr/bin/env bash
# WebGPU vs CPU on one GPU machine (used on the lent NVIDIA machine; works on any Linux box
# with a Vulkan driver). Builds a random-weight model in a real shape, prepares it for
# webgpu and cpu with the builder-int4 recipe, benchmarks both in one run, compares. The
# webgpu model is benchmarked twice: direct decoding (the default, oga_npu.engine) and
# onnxruntime-genai's Generator (OGA_NPU_DECODER=oga).
#   scripts/gpu_webgpu_bench.sh SHAPE TOKENIZER_DIR OUT_DIR [LENGTHS] [REPS]
set -euo pipefail
SHAPE="${1:-llama-3.2-1b}"; TOK="$2"; OUT="$3"; LENGTHS="${4:-128,1024}"; REPS="${5:-3}"
WORK="${WORK:-/tmp/oga-npu-gpu}"
PY="${PYTHON:-python3}"
mkdir -p "$WORK" "$OUT"
"$PY" scripts/make_random_model.py "$SHAPE" "$WORK/hf-$SHAPE" --tokenizer "$TOK" --context 4096
"$PY" -m oga_npu devices | tee "$OUT/devices-$SHAPE.txt"
for target in webgpu cpu; do
  "$PY" -m oga_npu prepare "$WORK/hf-$SHAPE" --target "$target" --recipe builder-int4 -o "$WORK/$SHAPE-$target"
done
for target in webgpu cpu; do
  "$PY" -m oga_npu bench -m "$WORK/$SHAPE-$target" -l "$LENGTHS" -g 128 -r "$REPS" -w 1 \
    --json "$OUT/$SHAPE-$target.jsonl" --label "$SHAPE $target" | tee "$OUT/$SHAPE-$target.txt"
done
OGA_NPU_DECODER=oga "$PY" -m oga_npu bench -m "$WORK/$SHAPE-webgpu" -l "$LENGTHS" -g 128 -r "$REPS" -w 1 \
  --json "$OUT/$SHAPE-webgpu-oga.jsonl" --label "$SHAPE webgpu (OGA Generator)" | tee "$OUT/$SHAPE-webgpu-oga.txt"
echo "== ratio webgpu / cpu (B/A: TTFT lower is better, decode higher is better)"
"$PY" -m oga_npu bench compare "$OUT/$SHAPE-cpu.jsonl" "$OUT/$SHAPE-webgpu.jsonl" | tee "$OUT/$SHAPE-compare.txt"
echo "== ratio webgpu with onnxruntime-genai's Generator / cpu"
"$PY" -m oga_npu bench compare "$OUT/$SHAPE-cpu.jsonl" "$OUT/$SHAPE-webgpu-oga.jsonl" | tee "$OUT/$SHAPE-compare-oga.txt"
"$PY" -m oga_npu bench plot "$OUT/$SHAPE-cpu.jsonl" "$OUT/$SHAPE-webgpu-oga.jsonl" "$OUT/$SHAPE-webgpu.jsonl" -o "$OUT/$SHAPE.png"
echo "== chat on webgpu (random weights: the answer is noise)"
printf 'What is the capital of France?\n/stats\n/exit\n' | "$PY" -m oga_npu chat -m "$WORK/$SHAPE-webgpu" -n 24 --timings || true
