"""Events -> OpenAI objects: the envelopes, usage, SSE framing, and whole (not streamed) answers.

A tool call is held back and sent whole at the end of a stream; with tool_choice auto the
first character decides ('{': a call, the grammar allows no other way to one), and a text
answer streams from there.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.responses import StreamingResponse

from ..generate import GenerationEvent
from .errors import ApiError
from .worker import Started

log = logging.getLogger("oga_npu.server")


class Stream(StreamingResponse):
    """Closes its body when the client goes away (Starlette cancels the send loop and leaves
    the generator suspended), so the device queue is released at once, not at GC."""

    async def __call__(self, scope, receive, send):
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


def usage(ev: GenerationEvent | None) -> dict:
    p, c, k = (ev.prompt_tokens, ev.generated_tokens, ev.cached_tokens) if ev else (0, 0, 0)
    return {
        "prompt_tokens": p,
        "completion_tokens": c,
        "total_tokens": p + c,
        "prompt_tokens_details": {"cached_tokens": k},
    }


def finish(ev: GenerationEvent, tool_call: bool) -> str:
    if ev.finish_reason == "length":
        return "length"
    return "tool_calls" if tool_call else "stop"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def tool_calls(text: str) -> list[dict] | None:
    """The answer as OpenAI tool calls, or None when it is not one call's JSON."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))},
        }
    ]


class Envelope:
    """One answer's id, time and model; wraps a choice (or, a usage chunk, none)."""

    def __init__(self, prefix: str, model: str):
        self.id, self.created, self.model = f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model

    def __call__(self, obj: str, choice: dict | None, usage_: dict | None = None) -> dict:
        out = {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [] if usage_ else [choice],
        }
        if usage_:
            out["usage"] = usage_
        return out


def chat_chunk(env: Envelope) -> Callable:
    def chunk(text, reason, first=False, usage=None, tool_calls=None):
        if first:
            delta = {"role": "assistant", "content": ""}
        elif tool_calls is not None:
            delta = {"tool_calls": tool_calls}
        else:
            delta = {"content": text} if text is not None else {}
        return env(
            "chat.completion.chunk", {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}, usage
        )

    return chunk


def completion_chunk(env: Envelope) -> Callable:
    def chunk(text, reason, first=False, usage=None, tool_calls=None):
        if first:
            return None
        return env(
            "text_completion", {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}, usage
        )

    return chunk


def sse_response(run: Started, make_chunk: Callable, include_usage: bool, tool_call: bool | str) -> Stream:
    return Stream(
        body(run, make_chunk, include_usage, tool_call),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def body(run: Started, make_chunk: Callable, include_usage: bool, tool_call: bool | str):
    """SSE: role first (chat), text deltas, the finish chunk, usage, [DONE]; errors as an event."""
    last = None
    text: list[str] = []
    try:
        head = make_chunk(None, None, first=True)
        if head is not None:
            yield sse(head)
        pending = [run.first] if run.first is not None else []
        while True:
            if pending:
                ev = pending.pop()
            else:
                try:
                    ev = await run.events.__anext__()
                except StopAsyncIteration:
                    break
            last = ev
            if tool_call == "auto" and ev.text:
                tool_call = ev.text.startswith("{")
            if tool_call:
                text.append(ev.text)
            elif ev.text:
                yield sse(make_chunk(ev.text, None))
        if last is not None:
            for chunk in ending(last, make_chunk, "".join(text), tool_call, include_usage):
                yield sse(chunk)
    except ApiError as e:
        yield sse(e.body())
    except Exception as e:
        log.exception("stream failed")
        yield sse(ApiError(500, f"{type(e).__name__}: {e}", type_="server_error").body())
    finally:
        await run.events.aclose()
    yield "data: [DONE]\n\n"


def ending(
    last: GenerationEvent, make_chunk: Callable, held: str, tool_call: bool | str, include_usage: bool
) -> list[dict]:
    """The chunks after the text: a held-back tool call (or its text), the finish, usage."""
    out = []
    calls = None
    if tool_call == "auto":  # nothing was generated
        tool_call = False
    if tool_call:
        calls = tool_calls(held) if last.finish_reason != "length" else None
        if calls:
            out.append(make_chunk(None, None, tool_calls=[dict(c, index=i) for i, c in enumerate(calls)]))
        else:
            out.append(make_chunk(held, None))
    out.append(make_chunk(None, finish(last, bool(tool_call) and last.finish_reason != "length" and bool(calls))))
    if include_usage:
        out.append(make_chunk(None, None, usage=usage(last)))
    return out


async def collect(run: Started) -> tuple[str, GenerationEvent | None]:
    """A whole (not streamed) answer: its text and its last event."""
    parts, last = ([run.first.text], run.first) if run.first else ([], None)
    async for ev in run.events:
        parts.append(ev.text)
        last = ev
    return "".join(parts), last


async def chat_whole(run: Started, model: str, tool_call: bool | str) -> dict:
    env = Envelope("chatcmpl", model)
    text, last = await collect(run)
    if tool_call == "auto":
        tool_call = text.startswith("{")
    message: dict[str, Any] = {"role": "assistant", "content": text}
    reason = finish(last, tool_call) if last else "stop"
    if tool_call and reason == "tool_calls":
        calls = tool_calls(text)
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
        else:
            reason = "stop"
    return {
        "id": env.id,
        "object": "chat.completion",
        "created": env.created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage(last),
    }


async def completion_whole(run: Started, model: str) -> dict:
    env = Envelope("cmpl", model)
    text, last = await collect(run)
    return {
        "id": env.id,
        "object": "text_completion",
        "created": env.created,
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish(last, False) if last else "stop"}
        ],
        "usage": usage(last),
    }


def chat_sse(run: Started, model: str, include_usage: bool, tool_call: bool | str) -> Stream:
    return sse_response(run, chat_chunk(Envelope("chatcmpl", model)), include_usage, tool_call)


def completion_sse(run: Started, model: str, include_usage: bool) -> Stream:
    return sse_response(run, completion_chunk(Envelope("cmpl", model)), include_usage, False)
