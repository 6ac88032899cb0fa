"""`oga-npu chat`: a streaming REPL over `stream_generate`, with history trimming.

History rule: the system prompt is always kept; when the next turn would not fit the
context (prompt + max_tokens), the oldest user/assistant pairs are dropped, with a notice,
until the prompt takes at most half the room (llama.cpp's context shift frees half the
context the same way): the turns after that append to the cached KV again, so a full
conversation re-reads its history once per half context, not on every turn.

KV reuse: the session keeps the model's last Generator (kvcache.PromptCache), so a turn
prefills only the new message, not the whole history (unless the provider cannot
continue a sequence, or trimming changed the start of the history).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field

from .errors import ChatTemplateError, ContextLengthError, GenerationError, OgaNpuError
from .generate import GenerationEvent, GenerationOptions, encode_chat, render_prompt, stream_generate
from .kvcache import PromptCache
from .model import LoadedModel

HELP = """commands:
  /clear         forget the conversation (keeps the system prompt)
  /system TEXT   set the system prompt (and clear)
  /stats         TTFT and tokens/s of the last answer
  /exit, /bye    leave (Ctrl+D too)
  \"\"\"            start and end a multi-line message
Ctrl+C stops the current answer and keeps the session."""


@dataclass
class ChatSession:
    lm: LoadedModel
    options: GenerationOptions
    system: str | None = None
    chat_template: str | None = None
    history: list[dict] = field(default_factory=list)
    last: GenerationEvent | None = None
    notices: list[str] = field(default_factory=list)
    reuse: bool = True  # keep the KV cache between turns
    cache: PromptCache | None = None

    def __post_init__(self) -> None:
        # Fail at start, not at the first message, when the model has no chat template:
        # a base model would otherwise get the conversation as raw text.
        if not (self.chat_template or self.lm.chat_template()):
            raise ChatTemplateError(
                f"{self.lm.path} has no chat template (a base model?): chat cannot format a conversation for it",
                "pass --chat-template FILE (a Jinja chat template, e.g. the instruct model's chat_template.jinja), "
                "or complete plain text with `oga-npu run --raw PROMPT -m MODEL`",
            )
        render_prompt(self.lm, [{"role": "user", "content": "hi"}], self.chat_template)
        if self.reuse and self.cache is None:
            self.cache = PromptCache(self.lm)

    def messages(self, user: str) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system}] if self.system else []
        return sys_msg + self.history + [{"role": "user", "content": user}]

    def _trim(self, user: str) -> list[int]:
        """The prompt's ids; when they and max_tokens do not fit the context, the oldest turns
        dropped until the prompt takes at most half the room (see the module docstring)."""
        limit = self.lm.context_length
        if self.lm.hybrid_limit:
            limit = min(limit, self.lm.hybrid_limit)
        room = limit - self.options.max_tokens  # prompt tokens that fit beside the answer
        ids = encode_chat(self.lm, self.messages(user), self.chat_template)
        dropped = 0
        while self.history and len(ids) > (room if not dropped else room // 2):
            self.history = self.history[2:]
            dropped += 1
            ids = encode_chat(self.lm, self.messages(user), self.chat_template)
        if dropped:
            self.notices.append(
                f"(dropped the {dropped} oldest turn(s): the conversation filled the {limit}-token context)"
            )
        return ids

    def send(self, user: str):
        """Stream the answer to `user`; history keeps what was produced (also when interrupted)."""
        if not user.strip():
            raise GenerationError("the message is empty", "type some text")
        ids = self._trim(user)  # rendered and tokenized once; generation takes the ids
        parts: list[str] = []
        try:
            for ev in stream_generate(self.lm, ids, self.options, cache=self.cache if self.reuse else None):
                parts.append(ev.text)
                self.last = ev
                yield ev
        finally:
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(parts)}]

    def clear(self) -> None:
        self.history = []


def _read_message(prompt: str, interactive: bool) -> str | None:
    try:
        line = input(prompt) if interactive else sys.stdin.readline()
    except EOFError:
        return None
    if not interactive and line == "":
        return None
    line = line.rstrip("\n")
    if line.strip() == '"""':
        lines = []
        while True:
            try:
                nxt = input("... ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and nxt == "":
                break
            nxt = nxt.rstrip("\n")
            if nxt.strip() == '"""':
                break
            lines.append(nxt)
        return "\n".join(lines)
    return line


def stats_line(ev: GenerationEvent | None) -> str:
    if ev is None:
        return "no answer yet"
    ttft = f"{ev.ttft * 1000:.0f} ms" if ev.ttft else "-"
    dec = f"{ev.decode_tps:.1f} tok/s" if ev.decode_tps else "-"
    pre = f"{ev.prefill_tps:.0f} tok/s" if ev.prefill_tps else "-"
    cached = f" ({ev.cached_tokens} cached)" if ev.cached_tokens else ""
    return (
        f"[{ev.runtime}] prompt {ev.prompt_tokens} tok{cached}, answer {ev.generated_tokens} tok, TTFT {ttft}, "
        f"prefill {pre}, decode {dec}"
    )


def repl(session: ChatSession, timings: bool = False, out=None) -> None:
    out = out or sys.stdout
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"oga-npu chat · {session.lm.path} on {session.lm.provider} · /help for commands", file=sys.stderr)
    while True:
        msg = _read_message(">>> " if interactive else "", interactive)
        if msg is None:
            break
        text = msg.strip()
        if not text:
            continue
        if text in ("/exit", "/bye", "/quit"):
            break
        if text == "/help":
            print(HELP, file=sys.stderr)
            continue
        if text == "/clear":
            session.clear()
            print("(cleared)", file=sys.stderr)
            continue
        if text.startswith("/system"):
            session.system = text[len("/system") :].strip() or None
            session.clear()
            print("(system prompt set, conversation cleared)", file=sys.stderr)
            continue
        if text == "/stats":
            print(stats_line(session.last), file=sys.stderr)
            continue
        if re.match(r"/\w+(\s|$)", text):  # a mistyped command never goes to the model as a message
            print(f"unknown command {text.split()[0]}, /help lists them", file=sys.stderr)
            continue
        try:
            for ev in session.send(msg):
                out.write(ev.text)
                out.flush()
            out.write("\n")
        except KeyboardInterrupt:
            out.write("\n")
            print("(stopped)", file=sys.stderr)
            continue
        except ContextLengthError as e:
            print(f"Error: {e.message}", file=sys.stderr)
            continue
        except OgaNpuError as e:
            print(f"Error: {e.message}", file=sys.stderr)
            continue
        finally:
            for n in session.notices:
                print(n, file=sys.stderr)
            session.notices.clear()
        if timings:
            print(stats_line(session.last), file=sys.stderr)
