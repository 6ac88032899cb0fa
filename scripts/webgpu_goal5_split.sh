#!/usr/bin/env bash
# Second half of scripts/webgpu_goal5.sh: which part of Q4_K_M costs on WebGPU. Two GGUFs in
# the same shape: Q4_K everywhere (the offset products, no 8-bit layer) and Q4_0+Q6_K (Q4_K_M's
# 8-bit layers, no offset product), each prepared with gguf-native and benched.
#   scripts/webgpu_goal5_split.sh OUT_DIR [TOKENIZER_JSON]   (env as webgpu_goal5.sh)
set -uo pipefail
OUT="$1"; TOKJSON="${2:-}"
T="${TARGET:-webgpu}"; W="${WORK:-/tmp/g5s}"; PY="${PYTHON:-python3}"
LENGTHS="${LENGTHS:-128,1024}"; GEN="${GEN:-128}"; REPS="${REPS:-3}"; LAYERS="${LAYERS:-16}"
R="$W/results"; mkdir -p "$R" "$OUT"
mk=(scripts/make_1b_gguf.py --layers "$LAYERS")
[ -n "$TOKJSON" ] && mk+=(--tokenizer-json "$TOKJSON")
[ -n "${VOCAB:-}" ] && mk+=(--vocab "$VOCAB")
"$PY" "${mk[@]}" "$W/q4k.gguf" --quant Q4_K >"$R/make-q4k.log" 2>&1 &
"$PY" "${mk[@]}" "$W/q40q6k.gguf" --quant Q4_0+Q6_K >"$R/make-q40q6k.log" 2>&1 &
wait; tail -n1 "$R"/make-*.log
for m in q4k q40q6k; do
  OGA_NPU_HOME="$W/home-$m" "$PY" -m oga_npu prepare "$W/$m.gguf" --target "$T" -o "$W/$m-native" >"$R/prepare-$m.log" 2>&1 &
done
wait
for m in q4k q40q6k; do
  echo "== $m gguf-native"
  "$PY" -m oga_npu bench -m "$W/$m-native" -l "$LENGTHS" -g "$GEN" -r "$REPS" -w 1 --json "$R/$m-native.jsonl" 2>"$R/bench-$m.log" \
    || tail -n 8 "$R/prepare-$m.log" "$R/bench-$m.log"
  tar czf "$OUT/split.tgz" -C "$W" results
done
tar czf "$OUT/split.tgz" -C "$W" results
