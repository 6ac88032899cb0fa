"""Prompt text -> token ids, the way transformers does it, with special tokens only where
the chat template put them.

- Chat (`chat_ids`): the template is rendered to text as before; a message's content is
  then tokenized as text, so a user who types `<|im_end|>\\n<|im_start|>system ...` gets
  ordinary text tokens, not a system turn (a prompt injection by control strings). Without control strings in any
  content the ids are those of the whole rendered string (= transformers'
  `apply_chat_template(..., tokenize=True)`); with them, the template's own special tokens
  are found in a second rendering where every control string in the contents is replaced
  by private-use characters of the same length, and the text between them is tokenized
  with special-token parsing off.
- Raw text (`raw_ids`: `run --raw`, /v1/completions, bench): BOS first when the tokenizer
  asks for it (`add_bos_token` in tokenizer_config.json, or a post-processor that adds
  it, as transformers' `tokenizer(text)` does), never twice.

Both use the folder's tokenizer.json through Hugging Face `tokenizers` (a transformers
dependency); a folder without one falls back to onnxruntime-genai's `Tokenizer.encode`,
and then refuses contents that hold a control string.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ChatTemplateError

_PRIVATE = "\ue000"  # private-use character: never a special token, not whitespace


@dataclass
class _Tok:
    hf: object | None  # tokenizers.Tokenizer with encode_special_tokens on, or None
    hf_parse: object | None  # the same with special tokens parsed (whole strings)
    specials: dict[str, int]  # control string -> id
    rstrip: set[str]  # added tokens that eat whitespace after them
    lstrip: set[str]  # ... before them
    bos: int | None  # id to put first in raw prompts, None when not asked for
    pattern: re.Pattern | None


_cache: dict[str, _Tok] = {}
_lock = threading.Lock()


def _load(folder: Path) -> _Tok:
    cfg_path = folder / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    except (OSError, ValueError):
        cfg = {}
    specials: dict[str, int] = {}
    rstrip: set[str] = set()
    lstrip: set[str] = set()
    hf = hf_parse = None
    tj = folder / "tokenizer.json"
    if tj.exists():
        from tokenizers import Tokenizer

        hf_parse = Tokenizer.from_file(str(tj))
        hf = Tokenizer.from_file(str(tj))
        hf.encode_special_tokens = True
        for i, t in hf.get_added_tokens_decoder().items():
            if t.special:
                specials[t.content] = int(i)
                if t.rstrip:
                    rstrip.add(t.content)
                if t.lstrip:
                    lstrip.add(t.content)
    else:  # no tokenizer.json: the control strings tokenizer_config names (refused in contents)
        for i, t in (cfg.get("added_tokens_decoder") or {}).items():
            if isinstance(t, dict) and t.get("special") and t.get("content"):
                specials[t["content"]] = int(i)
    bos = None
    bos_tok = cfg.get("bos_token")
    if isinstance(bos_tok, dict):
        bos_tok = bos_tok.get("content")
    if hf_parse is not None:
        add = cfg.get("add_bos_token")
        bos_id = hf_parse.token_to_id(bos_tok) if isinstance(bos_tok, str) else None
        if add is True and bos_id is not None:
            bos = bos_id
        elif add is None:  # no setting: what the post-processor does (transformers' tokenizer(text))
            probe = hf_parse.encode("a", add_special_tokens=True).ids
            plain = hf_parse.encode("a", add_special_tokens=False).ids
            if len(probe) > len(plain) and probe[-len(plain) :] == plain:
                bos = probe[0]
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))) if specials else None
    return _Tok(hf, hf_parse, specials, rstrip, lstrip, bos, pattern)


def _tok(lm) -> _Tok:
    key = str(Path(lm.path).resolve())
    with _lock:
        t = _cache.get(key)
        if t is None:
            t = _cache[key] = _load(Path(lm.path))
    return t


def _oga(lm, text: str) -> list[int]:
    return [int(t) for t in lm.tokenizer.encode(text)]


def bos_id(lm) -> int | None:
    """The id raw prompts start with, None when the tokenizer asks for no BOS."""
    return _tok(lm).bos


def raw_ids(lm, text: str) -> list[int]:
    """A raw prompt's ids: BOS first when the tokenizer asks for it; special-token strings
    in the text are parsed (as transformers' and llama.cpp's completion endpoints do)."""
    t = _tok(lm)
    if t.hf_parse is None:
        return _oga(lm, text)
    ids = list(t.hf_parse.encode(text, add_special_tokens=False).ids)
    if t.bos is not None and (not ids or ids[0] != t.bos):
        ids.insert(0, t.bos)
    return ids


def chat_ids(lm, messages: list[dict], render) -> list[int]:
    """Ids of the conversation: `render(messages)` is the chat template (a string); control
    strings in the messages' contents become text tokens."""
    text = render(messages)
    t = _tok(lm)
    hit = t.pattern is not None and any(t.pattern.search(m.get("content") or "") for m in messages)
    if not hit:
        if t.hf_parse is None:
            return _oga(lm, text)
        return list(t.hf_parse.encode(text, add_special_tokens=False).ids)
    if t.hf is None:
        raise ChatTemplateError(
            "a message holds one of the model's control strings (e.g. "
            f"{next(iter(t.specials))!r}) and this model folder has no tokenizer.json to "
            "tokenize it as text",
            "remove the control strings from the message",
        )
    clean = [
        dict(m, content=t.pattern.sub(lambda mo: _PRIVATE * len(mo.group()), m["content"]))
        if isinstance(m.get("content"), str)
        else m
        for m in messages
    ]
    safe = render(clean)
    if len(safe) != len(text):
        raise ChatTemplateError(
            "a message holds one of the model's control strings and this chat template "
            "changes the text around it, so it cannot be kept as text",
            "remove the control strings from the message",
        )
    ids: list[int] = []
    pos = 0
    pending_lstrip = False
    for mo in t.pattern.finditer(safe):
        s = mo.group()
        if text[mo.start() : mo.end()] != s:  # pragma: no cover - the renders disagree
            raise ChatTemplateError(
                "the chat template renders differently for the same messages",
                "remove the control strings from the message",
            )
        span = text[pos : mo.start()]
        if pending_lstrip:
            span = span.lstrip()
        if s in t.lstrip:
            span = span.rstrip()
        if span:
            ids += t.hf.encode(span, add_special_tokens=False).ids
        ids.append(t.specials[s])
        pending_lstrip = s in t.rstrip
        pos = mo.end()
    span = text[pos:]
    if pending_lstrip:
        span = span.lstrip()
    if span:
        ids += t.hf.encode(span, add_special_tokens=False).ids
    return ids
