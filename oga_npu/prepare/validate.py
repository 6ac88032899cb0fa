"""Validate stage: load the built model with onnxruntime-genai and generate a few tokens.

Input: the model folder from the build (or hybrid) stage. Output: validate.json with the
prompt, the answer, the token ids, the provider and tokens/s. Runs in a child process
(`python -m oga_npu.prepare.validate`) so a native crash on load is reported with its
log instead of taking prepare down. A target whose runtime is not on this machine
(dml, hybrid and npu without Windows/Ryzen AI) is skipped with the reason recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m oga_npu.prepare.validate")
    ap.add_argument("model")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from .. import model as model_mod
    from ..errors import OgaNpuError
    from ..generate import GenerationOptions, generate

    path = Path(args.model)
    try:
        from ..gguf.expand import for_stage

        # the same checks and provider registration as `oga-npu run`, and the form it will open
        lm = model_mod.load(path, files=for_stage(path))
        raw = lm.chat_template() is None
        text, last = generate(
            lm, args.prompt, GenerationOptions(max_tokens=args.max_tokens, temperature=0.0), raw=raw
        )  # greedy: one answer
    except OgaNpuError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - native errors: translated, one line
        print(f"error: {model_mod.translate(e, path).message}", file=sys.stderr)
        return 1
    result = {
        "prompt": args.prompt,
        "answer": text,
        "chat_template": not raw,
        "provider": last.provider,
        "generated_tokens": last.generated_tokens,
        "prompt_tokens": last.prompt_tokens,
        "ttft_s": last.ttft,
        "decode_tps": last.decode_tps,
        "finish_reason": last.finish_reason,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- stage protocol (see oga_npu.prepare)

NAME = "validate"
PRODUCES_MODEL = False
RESULT = "validate.json"


def applies(ctx) -> bool:
    return True


def key(ctx) -> dict:
    v = ctx.recipe.validate_
    return {"prompt": v.prompt, "max_tokens": v.max_tokens}


def argv(ctx, model_dir: Path, out_dir: Path) -> list[str]:
    from ..tools import python_module_argv

    v = ctx.recipe.validate_
    return python_module_argv(
        "oga_npu.prepare.validate",
        str(model_dir),
        "--prompt",
        v.prompt,
        "--max-tokens",
        str(v.max_tokens),
        "--out",
        str(out_dir / RESULT),
    )


def runnable_here(ctx, model_dir: Path) -> tuple[bool, str]:
    """Whether the target's runtime exists on this machine."""
    from .. import model as model_mod

    config_path = model_dir / "genai_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    provider = model_mod.configured_providers(config)[0]
    return model_mod.provider_available(provider, config, model_dir)


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    return [
        "$ " + " ".join(argv(ctx, in_dir, out_dir)),
        "  (skipped with the reason recorded where the target's runtime is not on this machine)",
    ]


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    from ..tools import run_tool

    ok, why = runnable_here(ctx, in_dir)
    if not ok:
        result = {"skipped": why}
        (out_dir / RESULT).write_text(json.dumps(result, indent=2))
        return result
    run_tool(
        argv(ctx, in_dir, out_dir),
        name="validate (onnxruntime-genai)",
        env=ctx.tool_env(),
        log_path=log_path,
        version=ctx.versions.get("onnxruntime-genai"),
    )
    return json.loads((out_dir / RESULT).read_text())
