"""A request -> what to generate: the messages (or prompt), the guidance (JSON schema or tool
grammar), whether the answer is a tool call, and the `GenerationOptions`.

Nothing here touches the device: `chat_plan`/`completion_prompt` run on the event loop,
`chat_inputs`/`completion_inputs` (template, tokenizer, options) in the model's prep thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ContextLengthError, OgaNpuError
from ..generate import GenerationOptions, check_fits, encode_chat, encode_raw, resolve_options
from .errors import ApiError, from_library, not_supported
from .schemas import ChatRequest, CompletionRequest, NamedToolChoice, Sampling, Tool

# max_tokens when a request gives none: a quarter of the context, at most this, and never more
# than the room left (a small model otherwise rambles to the end of its context; the KV cache
# is sized by prompt + max_tokens). /v1/models says it per model (`default_max_tokens`).
DEFAULT_MAX_TOKENS = 1024


def default_max_tokens(context_length: int) -> int:
    """The answer length a request without max_tokens gets: min(1024, context / 4)."""
    return max(1, min(DEFAULT_MAX_TOKENS, context_length // 4))


@dataclass
class ChatPlan:
    messages: list[dict]  # for the chat template
    guidance: tuple[str, str] | None  # (kind, grammar) for onnxruntime-genai's llguidance
    tool_call: bool | str  # True: a call; "auto": one if it starts with '{'; False: text

    def errors(self, e: OgaNpuError) -> ApiError:
        return from_library(e, "messages", "tools" if self.tool_call else "response_format")


def options(
    req: Sampling, max_tokens: int | None, lm, n_prompt: int, guidance=None, prompt_param: str = "messages"
) -> GenerationOptions:
    if req.n != 1:
        raise not_supported("n other than 1", "n")
    if req.presence_penalty or req.frequency_penalty:
        raise not_supported(
            "presence_penalty/frequency_penalty (use repetition_penalty)",
            "presence_penalty" if req.presence_penalty else "frequency_penalty",
        )
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stops):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop strings", param="stop")
    limit = min(lm.context_length, lm.hybrid_limit or lm.context_length)
    if max_tokens is None:
        if limit - n_prompt < 1:
            raise from_library(ContextLengthError(n_prompt, 1, limit), prompt_param)
        max_tokens = min(limit - n_prompt, default_max_tokens(limit))
    kw: dict[str, Any] = {
        "max_tokens": max_tokens,
        "stop": tuple(stops),
        "guidance": guidance,
        "ignore_eos": req.ignore_eos,
    }
    for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty"):
        v = getattr(req, name)
        if v is not None:
            kw[name] = v
    opts = resolve_options(GenerationOptions(**kw), lm)  # unset sampling fields: the model's defaults
    try:
        opts.validate()
        check_fits(lm, n_prompt, max_tokens)
    except OgaNpuError as e:
        raise from_library(e, prompt_param) from e
    return opts


def schema_guidance(schema: dict) -> tuple[str, str]:
    """llguidance JSON; compact whitespace unless the schema says otherwise (small models
    otherwise tend to fill the answer with newlines)."""
    schema = dict(schema)
    schema.setdefault("x-guidance", {"whitespace_flexible": False})
    return ("json_schema", json.dumps(schema))


def tool_schema(tools: list[Tool], choice) -> dict:
    if isinstance(choice, NamedToolChoice):
        name = choice.function.get("name")
        tools = [t for t in tools if t.function.name == name]
        if not tools:
            raise ApiError(400, f"tool_choice names '{name}', which is not in tools", param="tool_choice")
    variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t.function.name},
                "arguments": t.function.parameters or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def auto_grammar(schema: dict) -> tuple[str, str]:
    """tool_choice auto, enforced: the answer is either one tool call (JSON that validates
    against the tools) or text that does not start with '{' - so its first character says
    which it is, and a streamed text answer streams."""
    schema = dict(schema)
    schema.setdefault("x-guidance", {"whitespace_flexible": False})
    return ("lark_grammar", "start: call | text\ncall: %json " + json.dumps(schema) + "\ntext: /[^{](.|\\n)*/\n")


NO_GUIDANCE = "this model/runtime has no guided output"
# response_format json_object (Ollama's format "json"): an object with at least one member, and
# some whitespace allowed between tokens. Held to compact JSON, a small model closes `{` at
# once (it wanted a newline): `{}` every time.
JSON_OBJECT = {
    "type": "object",
    "minProperties": 1,
    "x-guidance": {"whitespace_flexible": True, "whitespace_pattern": r"[\x20\x0A\x0D\x09]{1,8}"},
}


def response_format_guidance(req: ChatRequest, guided: bool, why_not: str = "") -> tuple[str, str] | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if not guided:
        raise not_supported(f"response_format {rf.type} ({why_not or NO_GUIDANCE})", "response_format")
    if rf.type == "json_object":
        from ..capabilities import capabilities

        schema = (
            JSON_OBJECT
            if capabilities().min_properties
            else {k: v for k, v in JSON_OBJECT.items() if k != "minProperties"}
        )
        return schema_guidance(schema)
    if rf.json_schema is None:
        raise ApiError(
            400, "response_format json_schema needs a json_schema object", param="response_format.json_schema"
        )
    return schema_guidance(rf.json_schema.schema_ or {"type": "object"})


def add_tools(
    req: ChatRequest, msgs: list[dict], guided: bool, why_not: str = ""
) -> tuple[tuple[str, str], bool | str]:
    """The tools as a system note and a grammar: (guidance, tool_call)."""
    if not guided:
        raise not_supported(f"tools ({why_not or NO_GUIDANCE})", "tools")
    schema = tool_schema(req.tools, req.tool_choice)
    listing = json.dumps([t.function.model_dump(exclude_none=True) for t in req.tools])
    if req.tool_choice in (None, "auto"):
        guidance, tool_call = auto_grammar(schema), "auto"
        note = (
            "You can call these functions. To call one, answer with only the call as JSON "
            f'{{"name": ..., "arguments": {{...}}}}; otherwise answer in words.\nFunctions: {listing}'
        )
    else:
        guidance, tool_call = schema_guidance(schema), True
        note = (
            "You can call these functions. Answer with one call as JSON "
            f'{{"name": ..., "arguments": {{...}}}}.\nFunctions: {listing}'
        )
    if msgs and msgs[0]["role"] == "system":
        msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + note}
    else:
        msgs.insert(0, {"role": "system", "content": note})
    return guidance, tool_call


def wants_guidance(req: ChatRequest) -> bool:
    """Whether the answer needs guided output (a response_format other than text, or tools)."""
    rf = req.response_format
    return (rf is not None and rf.type != "text") or bool(req.tools and req.tool_choice != "none")


def chat_plan(req: ChatRequest, guided: bool, why_not: str = "") -> ChatPlan:
    """Messages for the template, guidance, and whether the answer is a tool call. `guided`:
    the model's runtime enforces grammars (models.guidance_support), `why_not` says why not."""
    if req.logprobs or req.top_logprobs:
        raise not_supported("logprobs", "logprobs")
    msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    guidance = response_format_guidance(req, guided, why_not)
    tool_call: bool | str = False
    if req.tools and req.tool_choice != "none":
        if guidance:  # (set only when guided)
            raise not_supported("response_format together with tools", "response_format")
        guidance, tool_call = add_tools(req, msgs, guided, why_not)
    elif req.tool_choice not in (None, "none", "auto") and not req.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    if not any(m["content"].strip() for m in msgs if m["role"] == "user"):
        raise ApiError(400, "the conversation has no user text", param="messages")
    return ChatPlan(msgs, guidance, tool_call)


def chat_inputs(lm, plan: ChatPlan, req: ChatRequest) -> tuple[list[int], GenerationOptions]:
    """Template and tokens, then the options (in the model's prep thread)."""
    ids = encode_chat(lm, plan.messages)
    return ids, options(req, req.max_completion_tokens or req.max_tokens, lm, len(ids), plan.guidance)


def completion_prompt(req: CompletionRequest) -> str:
    if req.logprobs:
        raise not_supported("logprobs", "logprobs")
    if req.echo:
        raise not_supported("echo", "echo")
    if req.suffix:
        raise not_supported("suffix", "suffix")
    prompt = req.prompt
    if isinstance(prompt, list) and any(not isinstance(p, str) for p in prompt):
        raise ApiError(
            400,
            "token-id prompts are not supported by oga-npu serve: send the prompt as text",
            param="prompt",
            code="not_supported",
        )
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise not_supported("more than one prompt per request", "prompt")
        prompt = prompt[0]
    if not prompt.strip():
        raise ApiError(400, "the prompt is empty", param="prompt")
    return prompt


def completion_inputs(lm, prompt: str, req: CompletionRequest) -> tuple[list[int], GenerationOptions]:
    ids = encode_raw(lm, prompt)
    return ids, options(req, req.max_tokens, lm, len(ids), prompt_param="prompt")


def completion_errors(e: OgaNpuError) -> ApiError:
    return from_library(e, "prompt")
