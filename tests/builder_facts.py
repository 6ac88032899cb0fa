"""The lines of the public onnxruntime-genai model builders that oga-npu's quantized folder is
written for (the builders of Ryzen AI 1.6, 1.7/1.7.1 and 1.8). Paths are inside the PyPI wheel
(`pip download --no-deps onnxruntime-genai==X`). tests/builders_check.py reads each line in
the wheel on its path; tests/conformance/test_builders.py holds oga-npu to them."""

B = "onnxruntime_genai/models/builder.py"
B14 = "onnxruntime_genai/models/builders/base.py"

# (version, file in the wheel, line, text on that line, what oga-npu relies on)
FACTS = [
    ("0.9.2", B, 4301, "config = AutoConfig.from_pretrained(", "config.json is read through AutoConfig only"),
    ("0.11.2", B, 4654, "config = AutoConfig.from_pretrained(", "config.json is read through AutoConfig only"),
    ("0.14.0", "onnxruntime_genai/models/builder.py", 198, "config = AutoConfig.from_pretrained(", "same"),
    ("0.9.2", B, 176, 'rope_theta = config.rope_theta if hasattr(config, "rope_theta")', "top-level rope_theta"),
    ("0.11.2", B, 178, 'rope_theta = config.rope_theta if hasattr(config, "rope_theta")', "top-level rope_theta"),
    ("0.14.0", B14, 234, "config.rope_theta", "top-level rope_theta"),
    ("0.9.2", B, 191, 'if hasattr(config, "rope_scaling") and config.rope_scaling is not None:', "legacy rope_scaling"),
    ("0.11.2", B, 193, 'if hasattr(config, "rope_scaling") and config.rope_scaling is not None:', "same"),
    ("0.14.0", B14, 258, 'if hasattr(config, "rope_scaling") and config.rope_scaling is not None:', "same"),
    # longrope / llama3 are told apart by their KEYS, not by rope_type
    ("0.9.2", B, 308, 'if "short_factor" in config.rope_scaling:', "longrope by key"),
    ("0.9.2", B, 326, 'elif "low_freq_factor" in config.rope_scaling:', "llama3 by key"),
    ("0.11.2", B, 310, 'if "short_factor" in config.rope_scaling:', "longrope by key"),
    ("0.14.0", B14, 429, 'if "short_factor" in config.rope_scaling:', "longrope by key"),
    # hasattr() on a dict is always False: 0.9.2/0.11.2 read the llama3 old context length at the top level only
    ("0.9.2", B, 41, 'hasattr(config.rope_scaling, "original_max_position_embeddings")', "top-level original_max"),
    ("0.11.2", B, 41, 'hasattr(config.rope_scaling, "original_max_position_embeddings")', "top-level original_max"),
    ("0.14.0", B14, 61, "isinstance(config.rope_scaling, Mapping)", "0.14.0 also reads it from rope_scaling"),
    # save_processing: AutoTokenizer under transformers 4.57.6, which has no TokenizersBackend
    ("0.9.2", B, 476, "tokenizer = AutoTokenizer.from_pretrained(", "the tokenizer class must exist in 4.57"),
    ("0.11.2", B, 496, "tokenizer = AutoTokenizer.from_pretrained(", "same"),
    ("0.14.0", B14, 715, "tokenizer = AutoTokenizer.from_pretrained(", "same"),
]
