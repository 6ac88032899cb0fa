"""Speculative decoding through onnxruntime-genai's own API (0.18: `set_speculative_options`).

Two proposers, both verified by the target model, so greedy output is the target's own:

- n-gram prompt lookup (`--speculative ngram`): the next tokens are guessed from an earlier
  occurrence of the last N-1 tokens in the prompt or the answer; no second model. Good for
  copy-and-edit work (rewrite this code, fix this text), where the answer repeats the prompt.
- a draft model (`--draft-model DIR`): a smaller model prepared for the same target and
  provider, with the same tokenizer, proposes K tokens one by one; the target checks them
  in one multi-token step.

onnxruntime-genai needs the target's logits for every verified position: a model built
with `prune_lm_head` (last-token logits only, the recipes' default for a shorter prefill)
is refused for n-gram by onnxruntime-genai and gains nothing with a draft (it verifies one
token at a time), so both are refused here with the fix (prepare with the
recipe's `prune_lm_head = false`; the error says how).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import GenerationError, ModelFolderError

METHODS = ("ngram",)


@dataclass(frozen=True)
class Speculation:
    """What to speculate with: method 'ngram' or 'draft' (draft_dir set)."""

    method: str
    max_draft_tokens: int = 4
    ngram_size: int = 3
    draft_dir: Path | None = None

    def options(self) -> dict:
        """Keyword arguments for GeneratorParams.set_speculative_options."""
        if self.method == "ngram":
            return {"ngram_size": self.ngram_size, "max_draft_tokens": self.max_draft_tokens}
        return {"max_draft_tokens": self.max_draft_tokens}


def supported(og=None) -> bool:
    """Whether the installed onnxruntime-genai has the speculative API (0.18 has it); `og`: a
    module to ask instead (tests)."""
    if og is None:
        from .capabilities import capabilities

        return capabilities().speculative
    return hasattr(og.GeneratorParams, "set_speculative_options")


def parse(
    speculative: str | None, draft_model: Path | None, draft_tokens: int = 4, ngram_size: int = 3
) -> Speculation | None:
    """The CLI flags (--speculative ngram | --draft-model DIR, --draft-tokens K) as a Speculation."""
    if speculative is None and draft_model is None:
        return None
    if speculative is not None and draft_model is not None:
        raise GenerationError(
            "--speculative ngram and --draft-model cannot be combined (onnxruntime-genai runs one proposer)",
            "pass one of them",
        )
    if speculative is not None and speculative not in METHODS:
        raise GenerationError(
            f"unknown --speculative '{speculative}'", "pass --speculative ngram, or --draft-model DIR for a draft model"
        )
    if not 1 <= draft_tokens <= 16:
        raise GenerationError(f"--draft-tokens must be 1 to 16 (got {draft_tokens})", "pass e.g. --draft-tokens 4")
    if not 2 <= ngram_size <= 16:
        raise GenerationError(f"the n-gram size must be 2 to 16 (got {ngram_size})", "pass e.g. 3")
    if not supported():
        import onnxruntime_genai as og

        raise GenerationError(
            f"speculative decoding needs onnxruntime-genai 0.18 or newer "
            f"(installed: {getattr(og, '__version__', 'older')})",
            "pip install 'onnxruntime-genai>=0.18', or drop --speculative/--draft-model",
        )
    if draft_model is not None:
        return Speculation("draft", draft_tokens, ngram_size, Path(draft_model))
    return Speculation("ngram", draft_tokens, ngram_size)


def _decoder(path: Path) -> tuple[dict, dict]:
    try:
        cfg = json.loads((path / "genai_config.json").read_text(encoding="utf-8"))
        return cfg, cfg["model"]["decoder"]
    except (OSError, ValueError, KeyError) as e:
        raise ModelFolderError(
            f"{path} is no prepared model folder ({e})", "pass a folder made by oga-npu prepare"
        ) from e


def pruned_logits(path: Path) -> bool:
    """True when the model returns logits for the last position only (prune_lm_head):
    the graph's logits output has a fixed 1 where the sequence length would be."""
    _, dec = _decoder(path)
    try:
        import onnx

        g = onnx.load(str(path / dec["filename"]), load_external_data=False).graph
        name = dec.get("outputs", {}).get("logits", "logits")
        dims = next(o for o in g.output if o.name == name).type.tensor_type.shape.dim
    except Exception:  # noqa: BLE001 - unreadable graph: let onnxruntime-genai decide
        return False
    return len(dims) == 3 and dims[1].HasField("dim_value") and dims[1].dim_value == 1


def check_target(path: Path) -> None:
    if pruned_logits(path):
        try:
            recipe = json.loads((path / "oga_npu_manifest.json").read_text(encoding="utf-8")).get("recipe")
        except (OSError, ValueError):
            recipe = None
        name = recipe if isinstance(recipe, str) else "RECIPE"
        raise GenerationError(
            f"{path} returns logits for the last position only (prune_lm_head): onnxruntime-genai cannot verify "
            "several drafted tokens in one step with it",
            f"prepare it with full logits: copy oga_npu/recipes/{name}.toml, set prune_lm_head = false in its "
            f"extra_options, and run oga-npu prepare SOURCE --recipe THAT.toml -o DIR",
        )


def compose_draft(target: Path, draft: Path, out_root: Path) -> Path:
    """A folder onnxruntime-genai opens as target + draft: the target's files linked, its
    genai_config with `model.draft` (the draft's decoder, files under draft/) added.
    onnxruntime-genai takes only relative paths under the folder, hence the links."""
    tcfg, _ = _decoder(target)
    dcfg, ddec = _decoder(draft)
    tv, dv = tcfg["model"].get("vocab_size"), dcfg["model"].get("vocab_size")
    if tv != dv:
        raise GenerationError(
            f"the draft model's vocabulary ({dv}) is not the target's ({tv})",
            "pick a draft model of the same family (same tokenizer)",
        )
    tok_t, tok_d = target / "tokenizer.json", draft / "tokenizer.json"
    if tok_t.exists() and tok_d.exists() and tok_t.read_bytes() != tok_d.read_bytes():
        raise GenerationError(
            "the draft model's tokenizer differs from the target's",
            "pick a draft model of the same family (same tokenizer.json)",
        )
    tprov = tcfg["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    dprov = ddec.get("session_options", {}).get("provider_options", [])
    if [list(p) for p in tprov] != [list(p) for p in dprov]:
        raise GenerationError(
            "the draft model was prepared for another provider than the target",
            "prepare the draft model with the target's --target",
        )
    key = hashlib.sha256(f"{target.resolve()}|{draft.resolve()}".encode()).hexdigest()[:12]
    out = out_root / f"{target.name}+{draft.name}-{key}"
    out.mkdir(parents=True, exist_ok=True)
    for f in target.iterdir():
        link = out / f.name
        if f.is_file() and f.name != "genai_config.json" and not link.exists():
            os.symlink(f.resolve(), link)
    dlink = out / "draft"
    if dlink.is_symlink() or dlink.exists():
        dlink.unlink()
    os.symlink(draft.resolve(), dlink, target_is_directory=True)
    cfg = json.loads(json.dumps(tcfg))
    ddec = dict(ddec, filename=f"draft/{ddec['filename']}")
    cfg["model"]["draft"] = ddec
    (out / "genai_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out


def attach(lm, spec: Speculation | None) -> None:
    """Check that the loaded model can speculate as asked and make every generation on it
    speculate; with a draft model, reopen onnxruntime-genai's model as target + draft (lm
    keeps its folder, tokenizer and limits)."""
    if spec is None:
        return
    if lm.engine is not None:
        raise GenerationError(
            "speculative decoding runs through onnxruntime-genai, not the direct WebGPU decoder",
            "load the model with OGA_NPU_DECODER=oga, or drop --speculative/--draft-model",
        )
    check_target(Path(lm.path))
    lm.speculative_options = tuple(spec.options().items())  # generate._oga_generator applies them
    if spec.method != "draft":
        return
    import onnxruntime_genai as og

    from .runtime_errors import translate
    from .workdir import home

    comp = compose_draft(Path(lm.files_path), spec.draft_dir, home() / "speculative")
    try:
        lm._model = None  # the target alone first: one copy of its weights at a time
        lm._model = og.Model(str(comp))
    except Exception as e:
        raise translate(e, comp) from e
