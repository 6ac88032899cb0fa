"""Tiny models whose RoPE is not the default, each quantized ONCE by oga-npu's quantize stage
(main venv: transformers 5, Quark), for tests/builders_check.py to build with each pinned
onnxruntime-genai model builder (scripts/test_oga_versions.sh).

    python scripts/make_builder_folders.py OUT [--no-compat]

OUT/src/<name>: a hub-style source (transformers-4 config.json keys, as hub folders have them;
random weights; a byte-level BPE tokenizer trained offline on Python's own docs).
OUT/q/<name>: its quantized folder: cpu-fast's quantize (uint4, algorithm none, lm_head excluded,
group 128 or the largest that fits), all models in one process (Quark's import once).
OUT/builders.json lists them. --no-compat leaves out builder_compat.fix_folder (today's folder
before the fix: the check must fail on it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    torch_dtype="float32",
)
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}
LONGROPE = {
    "type": "longrope",
    "short_factor": [1.0 + i / 32 for i in range(8)],
    "long_factor": [1.0 + i for i in range(8)],
}
MODELS = {
    "llama-theta": ("llama", "LlamaForCausalLM", dict(rope_theta=500000.0, max_position_embeddings=512)),
    "llama3-scaled": (
        "llama",
        "LlamaForCausalLM",
        dict(rope_theta=500000.0, max_position_embeddings=2048, rope_scaling=LLAMA3),
    ),
    # hidden 128 / 4 heads: head_dim 32, rotary dim 16 (the runtime wants cos_cache width % 8 == 0);
    # max 1024 != original 256: the builders pick Phi3MiniLongRoPEModel
    "phi3-longrope": (
        "phi3",
        "Phi3ForCausalLM",
        dict(
            hidden_size=128,
            rope_theta=10000.0,
            max_position_embeddings=1024,
            original_max_position_embeddings=256,
            partial_rotary_factor=0.5,
            sliding_window=None,
            rope_scaling=LONGROPE,
        ),
    ),
}


def make_tokenizer(out: Path) -> int:
    import pydoc_data.topics as topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(topics.topics.values())[:20], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.pad_token = "</s>"
    fast.save_pretrained(out)
    return tok.get_vocab_size()


def make_source(name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    mtype, arch, extra = MODELS[name]
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(out)
    hub = {"architectures": [arch], "model_type": mtype, "vocab_size": vocab, **COMMON, **extra}
    (out / "config.json").write_text(json.dumps(hub, indent=2))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out), dtype=torch.float32)
    model.save_pretrained(out)
    (out / "config.json").write_text(json.dumps(hub, indent=2))  # the hub form, not transformers 5's


def main(out: Path, compat: bool) -> None:
    from oga_npu.prepare import builder_compat
    from oga_npu.prepare.quantize import layer_input_widths, quantize
    from oga_npu.recipe import fitting_group_size

    if not compat:
        builder_compat.fix_folder = lambda *_a, **_k: {}  # today's folder, for the before/after check
    listing = {}
    for name in MODELS:
        src, q = out / "src" / name, out / "q" / name
        make_source(name, src)
        q.mkdir(parents=True, exist_ok=True)
        group = fitting_group_size(128, layer_input_widths(json.loads((src / "config.json").read_text())))
        stats = quantize(
            src,
            q,
            scheme=f"uint4_wo_{group}",
            algorithm="none",
            exclude_layers=["lm_head"],
            calib_text=None,
            samples=1,
            seq_len=16,
            device="cpu",
            strict_rope=True,
        )
        listing[name] = {"source_config": str(src / "config.json"), "quantized": str(q), "stats": stats}
    (out / "builders.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(json.dumps(listing, indent=2))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-compat"]
    if len(args) != 1:
        sys.exit(__doc__)
    main(Path(args[0]).resolve(), "--no-compat" not in sys.argv)
