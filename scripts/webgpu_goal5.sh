#!/usr/bin/env bash
# Issue 21 goal 5: gguf-native against builder-int4 on WebGPU, one run on one machine.
# Makes random GGUFs in Llama-3.2-1B's shape (scripts/make_1b_gguf.py: Q4_K_M and Q4_0),
# prepares Q4_K_M with gguf-native and builder-int4 and Q4_0 with gguf-native (in parallel,
# separate caches), benches each (`oga-npu bench -l LENGTHS -g 128 -r REPS`), the gguf-native
# Q4_K_M also through onnxruntime-genai's Generator, then profiles each at the longest length
# (scripts/webgpu_profile.py --profile: time per op type, GPU kernel times). Everything lands
# in OUT_DIR/results.tgz (refreshed after each step) and OUT_DIR/summary.txt.
#   scripts/webgpu_goal5.sh OUT_DIR [TOKENIZER_JSON]
# env: TARGET (webgpu), LAYERS (16), VOCAB (all), LENGTHS (128,512,1024), GEN (128), REPS (3),
#      WORK (/tmp/g5), PYTHON (python3), PROFILE (1)
set -uo pipefail
OUT="$1"; TOKJSON="${2:-}"
T="${TARGET:-webgpu}"; W="${WORK:-/tmp/g5}"; PY="${PYTHON:-python3}"
LENGTHS="${LENGTHS:-128,512,1024}"; GEN="${GEN:-128}"; REPS="${REPS:-3}"; LAYERS="${LAYERS:-16}"
R="$W/results"; mkdir -p "$R" "$OUT"
pack() { tar czf "$OUT/results.tgz" -C "$W" results; cp "$R/summary.txt" "$OUT/summary.txt" 2>/dev/null; true; }
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$R/summary.txt" >&2; }
mk=(scripts/make_1b_gguf.py --layers "$LAYERS")
[ -n "$TOKJSON" ] && mk+=(--tokenizer-json "$TOKJSON")
[ -n "${VOCAB:-}" ] && mk+=(--vocab "$VOCAB")
say "making GGUFs (layers $LAYERS)"
"$PY" "${mk[@]}" "$W/q4km.gguf" --quant Q4_K_M >"$R/make-q4km.log" 2>&1 &
"$PY" "${mk[@]}" "$W/q40.gguf" --quant Q4_0 >"$R/make-q40.log" 2>&1 &
wait; tail -n1 "$R"/make-*.log | tee -a "$R/summary.txt"
say "preparing for $T"
prep() { OGA_NPU_HOME="$W/home-$2" "$PY" -m oga_npu prepare "$W/$1.gguf" --target "$T" "${@:3}" -o "$W/$2" \
           >"$R/prepare-$2.log" 2>&1; echo "prepare $2 rc=$? $(du -sh --apparent-size "$W/$2" 2>/dev/null | cut -f1)" >>"$R/summary.txt"; }
prep q4km q4km-native &
prep q4km q4km-builder --recipe builder-int4 &
prep q40 q40-native &
wait; pack
say "benches"
for m in q4km-native q4km-builder q40-native; do
  [ -f "$W/$m/genai_config.json" ] || { say "no $m"; continue; }
  "$PY" -m oga_npu bench -m "$W/$m" -l "$LENGTHS" -g "$GEN" -r "$REPS" -w 1 --json "$R/$m.jsonl" --label "$m" \
    2>"$R/bench-$m.log" | tee -a "$R/summary.txt"
  pack
done
for b in q4km-native q40-native; do
  [ -f "$R/$b.jsonl" ] && [ -f "$R/q4km-builder.jsonl" ] && { echo "== $b / q4km-builder (B/A)"; \
    "$PY" -m oga_npu bench compare "$R/q4km-builder.jsonl" "$R/$b.jsonl"; } 2>&1 | tee -a "$R/summary.txt"
done
pack
if [ "${PROFILE:-1}" = 1 ]; then
  LAST="${LENGTHS##*,}"
  for m in q4km-native q4km-builder oga q40-native; do
    if [ "$m" = oga ]; then
      [ -f "$W/q4km-native/genai_config.json" ] || continue
      say "q4km-native through onnxruntime-genai's Generator"
      OGA_NPU_DECODER=oga "$PY" -m oga_npu bench -m "$W/q4km-native" -l "$LENGTHS" -g "$GEN" -r "$REPS" -w 1 \
        --json "$R/q4km-native-oga.jsonl" 2>"$R/bench-q4km-native-oga.log" | tee -a "$R/summary.txt"
      pack; continue
    fi
    [ -f "$W/$m/genai_config.json" ] || continue
    say "profile $m at $LAST"
    "$PY" scripts/webgpu_profile.py "$W/$m" --lengths "$LAST" --gen 64 --reps 2 --profile --top 30 --label "$m" \
      --json "$R/profile-$m.json" >"$R/profile-$m.txt" 2>&1
    head -c 600 "$R/profile-$m.txt" >>"$R/summary.txt"; pack
  done
fi
say done; pack
