# M3: bench 3B (reps 2) + probes; of the two gguf-ggml variants the one that decoded faster at 1B
source .dev31/env.sh; source .dev31/chain.sh
G=$(python3 - <<'PY'
import json
from pathlib import Path
def dec(r):
    p = Path(f"/tmp/w/out/oga-llama-3.2-1b-Q4_K_M-{r}.jsonl")
    try: return [json.loads(x) for x in p.read_text().splitlines() if x.strip()][0]["decode_tps_p50"]
    except Exception: return 0
a, b = dec("gguf-ggml"), dec("gguf-ggml-nospin")
print("gguf-ggml-nospin" if b > a else "gguf-ggml")
PY
)
el "bench 3B with $G"
timeout ${T3:-560} $BVL --recipes gguf-native,${G3:-$G} --shape llama-3.2-3b --stage bench --reps ${REPS3:-2} 2>&1 | tee $OUT/m3.log | tail -60
el "bench 3B rc=${PIPESTATUS[0]}"; pack m3; el end
