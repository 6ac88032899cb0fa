"""The request bodies `oga-npu serve` takes (pydantic): unknown fields are refused, no NaN.

Fields accepted only at their no-op value (n, presence_penalty, frequency_penalty,
logprobs) are checked in plan.py; README.md has the support table.
"""

from __future__ import annotations

import json
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT32 = 2**31 - 1  # the largest count or id any numeric field takes


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ToolCallFunction(BaseModel):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, v: str) -> str:
        if v.strip():
            try:
                json.loads(v)
            except (ValueError, RecursionError):
                raise ValueError("the tool call's arguments must be a JSON string (e.g. '{\"x\": 1}')") from None
        return v


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        if self.content is None and self.tool_calls:
            return json.dumps(
                [
                    {"name": c.function.name, "arguments": json.loads(c.function.arguments or "{}")}
                    for c in self.tool_calls
                ]
            )
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaSpec(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict


class Sampling(_Strict):
    """Fields both routes share. Accepted only at their no-op value: n, presence_penalty,
    frequency_penalty, logprobs (400 otherwise). Accepted and ignored: user."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32)  # extension (llama.cpp, vLLM)
    repetition_penalty: float | None = Field(None, gt=0, le=100)  # extension
    ignore_eos: bool = False  # extension (llama.cpp, vLLM): benchmarks
    cache_prompt: bool = True  # extension (llama.cpp): false = full prefill
    seed: int | None = Field(None, ge=0, lt=2**31)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=-INT32, le=INT32)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(Sampling):
    # token ids (OpenAI's other prompt forms) are parsed to be refused by name (plan.py)
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=1, le=INT32)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None


class LoadRequest(_Strict):
    """POST /api/v1/load (Lemonade's name and body)."""

    model_name: str


class UnloadRequest(_Strict):
    """POST /api/v1/unload: one model, or (no model_name) every idle one."""

    model_name: str | None = None
