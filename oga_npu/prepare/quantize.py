"""Quantize stage: AMD Quark weight-only quantization of an HF folder.

Input: an HF model folder. Output: an HF folder whose config.json carries
`quantization_config.quant_method = "quark"` (read by the OGA model builder).
Tool: amd-quark's Python API (LLMTemplate -> ModelQuantizer -> freeze ->
export_safetensors), run in a child process (`python -m oga_npu.prepare.quantize`)
so its output lands in the stage log and Ctrl+C or a crash cannot leave a half model.

AWQ speed: Quark's clipping search (`AwqProcessor._compute_best_clip`) multiplies
[out, tokens, groups, group_size] tensors elementwise, which took 86% of AWQ's time on a
2-core CPU. `fast_compute_best_clip` does the same search with batched matrix products
and larger output-channel batches; the result is the same (see tests/test_quantize.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

DEFAULT_CLIP_BYTES = 256 * 1024 * 1024  # per output-channel batch in the clip search


def layer_input_widths(config: dict) -> list[int]:
    """Input widths of the linear layers Quark quantizes (decoder-only transformers)."""
    cfg = config.get("text_config", config)
    hidden = cfg.get("hidden_size")
    widths = [hidden] if hidden else []
    inter = cfg.get("intermediate_size")
    if inter:
        widths.append(inter)
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (hidden // heads if hidden and heads else None)
    if heads and head_dim:
        widths.append(heads * head_dim)
    return [w for w in widths if w]


# Seconds per million parameters on 2 quiet CPU cores (SmolLM2-135M: load + export about
# 40 s; AWQ on 16 x 128 calibration tokens about 140 s more). Rough, for the estimate line.
SECONDS_PER_MPARAM = {"load": 0.3, "awq_per_2k_tokens": 1.05, "gptq_per_2k_tokens": 1.5}


def estimate_seconds(params: int, algorithm: str, calib_tokens: int, cores: int, cuda: bool = False) -> float:
    m = params / 1e6
    secs = SECONDS_PER_MPARAM["load"] * m
    per = SECONDS_PER_MPARAM.get(f"{algorithm}_per_2k_tokens")
    if per:
        secs += per * m * calib_tokens / 2048 / (8 if cuda else 1)
    return secs * 2 / max(1, cores)


def model_type(config: dict) -> str:
    return config.get("model_type", "")


def quark_template(config: dict, algorithm: str | None):
    """Quark's LLMTemplate for this model (registered from oga_npu.architectures when Quark
    has none) and the AWQ config to pass when the table supplies the scaling layers."""
    from quark.torch import LLMTemplate

    from ..architectures import QUARK_KV_LAYERS, quark_spec
    from ..errors import ArchitectureError

    try:
        name, source, awq_layers = quark_spec(config)
    except ArchitectureError as e:
        raise SystemExit(f"error: {e.message}") from e
    if name not in LLMTemplate.list_available():
        LLMTemplate.register_template(
            LLMTemplate(
                model_type=name, kv_layers_name=QUARK_KV_LAYERS, q_layer_name="*q_proj", exclude_layers_name=["lm_head"]
            )
        )
    template = LLMTemplate.get(name)
    algo_configs = None
    if algorithm == "awq" and awq_layers is not None:
        from quark.torch.quantization.config.config import AWQConfig

        algo_configs = {
            "awq": AWQConfig(scaling_layers=[dict(x) for x in awq_layers], model_decoder_layers="model.layers")
        }
    return template, algo_configs


# ---------------------------------------------------------------- AWQ clip search


def fast_compute_best_clip(
    self, named_linears, input_feat, n_grid: int = 20, max_shrink: float = 0.5, n_sample_token: int = 512
):
    """Drop-in for quark's AwqProcessor._compute_best_clip (same arguments and result)."""
    import torch
    from quark.torch.utils.accelerate_helper import OffloadParameter

    with torch.no_grad():
        with OffloadParameter(named_linears):
            w = named_linears.weight
        gs = named_linears._weight_quantizer.group_size
        gs = gs if gs is not None and gs > 0 else w.shape[1]
        x = input_feat.reshape(-1, input_feat.shape[-1])
        n = min(x.shape[0], n_sample_token)
        x = x[0 :: x.shape[0] // n]
        groups = w.shape[1] // gs
        xg = x.reshape(x.shape[0], groups, gs).transpose(0, 1).to(w.device, w.dtype)  # G, N, gs
        co = w.shape[0]
        # As many output channels per batch as fit the budget ([G, N, batch] fp32 products).
        per_channel = groups * xg.shape[1] * 4 * 3
        cb = max(1, min(co, DEFAULT_CLIP_BYTES // max(per_channel, 1)))
        best_all = []
        for b in range(math.ceil(co / cb)):
            wb = w[b * cb : (b + 1) * cb].reshape(-1, 1, groups, gs)
            org_max = wb.abs().amax(dim=-1, keepdim=True)
            best = org_max.clone()
            min_err = torch.full_like(org_max, 1e9)
            org_out = torch.bmm(xg, wb.reshape(-1, groups, gs).permute(1, 2, 0))  # G, N, cb
            for i_s in range(int(max_shrink * n_grid)):
                max_val = org_max * (1 - i_s / n_grid)
                q_w = self.pseudo_quantize_tensor(torch.clamp(wb, -max_val, max_val), named_linears)
                cur = torch.bmm(xg, q_w.reshape(-1, groups, gs).permute(1, 2, 0))
                err = (cur - org_out).pow(2).mean(dim=1).transpose(0, 1).reshape(min_err.shape)
                better = err < min_err
                min_err = torch.where(better, err, min_err)
                best = torch.where(better, max_val, best)
            best_all.append(best)
        return torch.cat(best_all, dim=0).squeeze(1)


@contextlib.contextmanager
def fast_awq_clip(enabled: bool = True):
    from quark.torch.algorithm.awq.awq import AwqProcessor

    original = AwqProcessor._compute_best_clip
    if enabled:
        AwqProcessor._compute_best_clip = fast_compute_best_clip
    try:
        yield
    finally:
        AwqProcessor._compute_best_clip = original


# ---------------------------------------------------------------- the stage body


def calibration_batches(tokenizer, text: str, samples: int, seq_len: int):
    import torch

    from ..textdata import token_chunks

    ids = tokenizer(text, return_tensors=None, add_special_tokens=False)["input_ids"]
    return [torch.tensor([chunk]) for chunk in token_chunks(ids, samples, seq_len)]


def quantize(
    in_dir: Path,
    out_dir: Path,
    *,
    scheme: str,
    algorithm: str,
    exclude_layers: list[str],
    calib_text: str | None,
    samples: int,
    seq_len: int,
    device: str = "auto",
    fast_clip: bool = True,
    data_type: str = "float32",
    strict_rope: bool = False,
) -> dict:
    """Quantize in_dir into out_dir (which must exist and be empty). Returns stats.
    data_type: the dtype Quark loads the model in (AMD's --data_type). strict_rope: refuse a RoPE
    AMD's builders cannot read (hybrid/npu) instead of leaving it to onnxruntime-genai 0.18."""
    import torch
    from quark.torch import ModelQuantizer, export_safetensors
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.monotonic()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = AutoConfig.from_pretrained(in_dir)
    mtype = cfg.model_type
    algo = None if algorithm == "none" else algorithm
    template, algo_configs = quark_template(json.loads((in_dir / "config.json").read_text()), algo)
    qcfg = template.get_config(scheme=scheme, algorithm=algo, exclude_layers=exclude_layers, algo_configs=algo_configs)
    model = AutoModelForCausalLM.from_pretrained(in_dir, dtype=getattr(torch, data_type)).to(device).eval()
    tok = AutoTokenizer.from_pretrained(in_dir)
    calib = None
    if algo is not None:
        calib = [b.to(device) for b in calibration_batches(tok, calib_text or "", samples, seq_len)]
    t_load = time.monotonic() - t0
    quantizer = ModelQuantizer(qcfg)
    with fast_awq_clip(fast_clip and algo == "awq"):
        model = quantizer.quantize_model(model, calib)
    t_quant = time.monotonic() - t0 - t_load
    model = quantizer.freeze(model)
    export_safetensors(model, str(out_dir), custom_mode="quark")
    compat = finish_folder(in_dir, out_dir, tok, strict_rope)
    return {
        "builder_compat": compat,
        "data_type": data_type,
        "device": device,
        "scheme": scheme,
        "algorithm": algorithm,
        "model_type": mtype,
        "calibration_tokens": samples * seq_len if calib else 0,
        "load_seconds": round(t_load, 2),
        "quantize_seconds": round(t_quant, 2),
        "seconds": round(time.monotonic() - t0, 2),
    }


def finish_folder(in_dir: Path, out_dir: Path, tok, strict_rope: bool) -> dict:
    """The tokenizer and the files Quark does not copy, then the keys AMD's builders read
    (builder_compat: the last write to config.json). Returns what builder_compat changed."""
    from .builder_compat import BuilderCompatError, fix_folder

    tok.save_pretrained(out_dir)
    for extra in ("generation_config.json", "chat_template.jinja"):
        if (in_dir / extra).is_file() and not (out_dir / extra).exists():
            (out_dir / extra).write_bytes((in_dir / extra).read_bytes())
    qc = json.loads((out_dir / "config.json").read_text()).get("quantization_config", {})
    if qc.get("quant_method") != "quark":
        raise SystemExit("error: Quark's export has no quantization_config.quant_method = quark")
    try:
        return fix_folder(out_dir, strict=strict_rope)
    except BuilderCompatError as e:
        raise SystemExit(f"error: {e.message}\nfix: {e.fix}") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oga_npu.prepare.quantize")
    ap.add_argument("--spec", required=True, help="JSON file with the stage's arguments")
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    calib_text = None
    if spec["algorithm"] != "none":
        from ..textdata import load_text

        calib_text = load_text(spec["calib_text"], part="calibration")  # never the eval part
    stats = quantize(
        Path(spec["in_dir"]),
        Path(spec["out_dir"]),
        scheme=spec["scheme"],
        algorithm=spec["algorithm"],
        exclude_layers=spec["exclude_layers"],
        calib_text=calib_text,
        samples=spec["samples"],
        seq_len=spec["seq_len"],
        device=spec.get("device", "auto"),
        fast_clip=spec.get("fast_clip", True),
        data_type=spec.get("data_type", "float32"),
        strict_rope=spec.get("strict_rope", False),
    )
    Path(spec["stats"]).write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- stage protocol (see oga_npu.prepare)

NAME = "quantize"
PRODUCES_MODEL = True


def applies(ctx) -> bool:
    return ctx.recipe.quantize.engine == "quark"


def checkpoint_dtype(in_dir: Path | None) -> str | None:
    """The checkpoint's dtype as its config.json says (dtype, or transformers 4's torch_dtype)."""
    p = in_dir / "config.json" if in_dir is not None else None
    if p is None or not p.is_file():
        return None
    cfg = json.loads(p.read_text())
    cfg = cfg.get("text_config", cfg) if "dtype" not in cfg and "torch_dtype" not in cfg else cfg
    return cfg.get("dtype") or cfg.get("torch_dtype")


def settings(ctx, in_dir: Path | None = None) -> dict:
    """What this stage quantizes with, resolved for the target (recorded in the stage's detail,
    hence the manifest, and shown by a dry run). Without in_dir (or before the source is there)
    an auto data type for hybrid/npu reads 'per checkpoint'."""
    from ..recipe import AMD_TARGETS

    q, c = ctx.recipe.quantize, ctx.recipe.calibration
    dtype = q.data_type_for(ctx.target, checkpoint_dtype(in_dir))
    if q.data_type == "auto" and ctx.target in AMD_TARGETS and (in_dir is None or not in_dir.is_dir()):
        dtype = "per checkpoint (bf16: bfloat16, else float16)"
    calib = None
    if q.algorithm != "none":
        calib = {"text": ctx.calib_text, "samples": c.samples, "seq_len": c.seq_len}
    return {
        "scheme": q.scheme,
        "algorithm": q.algorithm,
        "group_size": q.group_size,
        "exclude_layers": q.exclude_for(ctx.target),
        "data_type": dtype,
        "calibration": calib,
        "strict_rope": ctx.target in AMD_TARGETS,
    }


def key(ctx) -> dict:
    from ..recipe import AMD_TARGETS

    q = ctx.recipe.quantize
    k = {"scheme": q.scheme, "algorithm": q.algorithm, "exclude": q.exclude_for(ctx.target)}
    if q.data_type != "auto" or ctx.target in AMD_TARGETS:  # auto for cpu/webgpu/dml: float32, as before
        k["data_type"] = q.data_type if q.data_type != "auto" else "auto-amd"
    if q.algorithm != "none":
        c = ctx.recipe.calibration
        k.update(samples=c.samples, seq_len=c.seq_len, text=ctx.calib_key)
    return k


def spec(ctx, in_dir: Path, out_dir: Path) -> dict:
    q, c = ctx.recipe.quantize, ctx.recipe.calibration
    st = settings(ctx, in_dir)
    return {
        "in_dir": str(in_dir),
        "out_dir": str(out_dir),
        "scheme": q.scheme,
        "algorithm": q.algorithm,
        "exclude_layers": st["exclude_layers"],
        "data_type": st["data_type"],
        "strict_rope": st["strict_rope"],
        "calib_text": ctx.calib_text,
        "samples": c.samples,
        "seq_len": c.seq_len,
        "device": q.device,
        "stats": str(out_dir / "quantize_stats.json"),
    }


def argv(spec_path: Path) -> list[str]:
    from ..tools import python_module_argv

    return python_module_argv("oga_npu.prepare.quantize", "--spec", str(spec_path))


def estimate(ctx, in_dir: Path) -> float | None:
    from ..hf_folder import safetensors_params
    from ..threads import physical_cores

    q, c = ctx.recipe.quantize, ctx.recipe.calibration
    params = safetensors_params(in_dir) or 0
    if not params:
        return None
    tokens = 0 if q.algorithm == "none" else c.samples * c.seq_len
    return estimate_seconds(params, q.algorithm, tokens, physical_cores(), cuda=q.device == "cuda")


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    q, st = ctx.recipe.quantize, settings(ctx, in_dir)
    c = st["calibration"]
    calib = "no calibration" if c is None else f"calibration: {c['samples']} x {c['seq_len']} tokens of {c['text']}"
    return [
        f"AMD Quark {st['scheme']}, algorithm {st['algorithm']}, exclude {st['exclude_layers']}, "
        f"data type {st['data_type']}, {calib}, device {q.device}",
        "$ " + " ".join(argv(out_dir.parent / f"{NAME}_spec.json")),
        f"  in:  {in_dir}",
        f"  out: {out_dir}",
    ]


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    from ..tools import run_tool

    s = spec(ctx, in_dir, out_dir)
    spec_path = out_dir.parent / f"{NAME}_spec.json"
    spec_path.write_text(json.dumps(s, indent=2))
    run_tool(
        argv(spec_path),
        name="AMD Quark quantize",
        env=ctx.tool_env(),
        log_path=log_path,
        version=ctx.versions.get("amd-quark"),
    )
    stats = json.loads((out_dir / "quantize_stats.json").read_text())
    spec_path.unlink(missing_ok=True)
    return {**stats, **settings(ctx, in_dir)}
