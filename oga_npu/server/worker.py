"""The decode loop in the model's thread, its tokens handed to the event loop.

`begin` runs the template and tokenizer in the model's prep thread, then starts `events`
and waits for its first event (so queue-full and early errors become HTTP statuses before
a stream starts). `events` holds the model's device queue while the worker thread runs
`stream_generate`:

- the worker runs the decode loop on its own and hands each event to the event loop
  (call_soon_threadsafe): the next token is computed while this one is encoded and sent,
  never waiting for the loop;
- tokens that come faster than `stream_interval` are sent together (the first one at once):
  a write and a client wake-up per token cost 5-9% of decode tok/s on 2 cores;
- a closed stream sets `stop`, which the worker reads after each token; it is one thread, so
  the next request's first step runs after the token in hand;
- reuse=False (cache_prompt: false): a full prefill, whose Generator is then the one kept
  for the next request.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

from ..errors import OgaNpuError
from ..generate import GenerationEvent, GenerationOptions
from . import log as serverlog
from .errors import ApiError, busy, from_library, shutting_down
from .models import QueueFull, ServedModel
from .state import ServerState


@dataclass
class Started:
    """A generation past its first event."""

    events: AsyncIterator[GenerationEvent]
    first: GenerationEvent | None  # None: it ended before any event


async def in_prep(sm: ServedModel, fn, *args):
    """Template and tokenizer work: beside the decode thread, so a request is checked
    (context length, options) and queued, or refused, while another one generates."""
    return await asyncio.get_running_loop().run_in_executor(sm.prep, fn, *args)


async def begin(
    st: ServerState,
    sm: ServedModel,
    build: Callable,
    reuse: bool = True,
    errors: Callable[[OgaNpuError], ApiError] = from_library,
) -> Started:
    """build() -> (token ids, options) in the prep thread, then the generation up to its first event."""
    try:
        ids, opts = await in_prep(sm, getattr(sm, "build", _call), build)  # a worker process: there
    except OgaNpuError as e:
        raise errors(e) from e
    gen = events(st, sm, ids, opts, reuse, errors)
    try:
        try:
            first = await gen.__anext__()
        except StopAsyncIteration:
            first = None
    except BaseException:
        await gen.aclose()
        raise
    return Started(gen, first)


def _call(fn):
    return fn()


def produce(
    sm: ServedModel,
    ids: list[int],
    opts: GenerationOptions,
    reuse: bool,
    put: Callable,
    stop: threading.Event,
    st: ServerState,
) -> None:
    """The worker thread: each event, then None (done), or the exception, through `put`."""
    try:
        if stop.is_set():  # cancelled before its turn came
            put(None)
            return
        if not reuse and sm.cache is not None:
            sm.cache.clear()
        it = sm.generate(sm.lm, ids, opts, cache=sm.cache)
        try:
            for ev in it:
                put(ev)
                if stop.is_set() or st.stopping:
                    break
        finally:
            it.close()
        put(None)
    except BaseException as e:  # noqa: BLE001 - handed to the request, raised there
        put(e)


async def acquire(st: ServerState, sm: ServedModel) -> None:
    try:
        await sm.queue.acquire()
    except QueueFull:
        raise busy(sm.id, sm.queue.waiting, sm.queue.max_queue) from None
    st.metrics.queue.labels(sm.id).set(sm.queue.depth)


async def events(
    st: ServerState,
    sm: ServedModel,
    ids: list[int],
    opts: GenerationOptions,
    reuse: bool = True,
    errors: Callable[[OgaNpuError], ApiError] = from_library,
) -> AsyncIterator[GenerationEvent]:
    """stream_generate in the model's worker thread, its events batched by `st.stream_interval`."""
    await acquire(st, sm)
    loop = asyncio.get_running_loop()
    box: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    run = getattr(sm, "produce", produce)  # a worker process (procworker.py): relayed from there
    sm.executor.submit(run, sm, ids, opts, reuse, lambda x: loop.call_soon_threadsafe(box.put_nowait, x), stop, st)
    last = None
    held: GenerationEvent | None = None  # text not yet sent (tokens faster than the interval)
    sent_at = 0.0
    try:
        while True:
            if st.stopping:
                raise shutting_down()
            if held is None:
                ev = await box.get()
            else:
                try:
                    ev = await asyncio.wait_for(box.get(), max(0.0, sent_at + st.stream_interval - loop.time()))
                except asyncio.TimeoutError:
                    yield held
                    held, sent_at = None, loop.time()
                    continue
            if ev is None:
                if st.stopping and (last is None or last.finish_reason is None):
                    # the worker saw the stop before this loop did: the same error event
                    if held is not None:
                        yield held
                    raise shutting_down()
                break
            if isinstance(ev, BaseException):
                raise ev
            last = ev
            held = ev if held is None else replace(ev, text=held.text + ev.text)
            now = loop.time()
            if ev.finish_reason is not None or now - sent_at >= st.stream_interval:
                yield held
                held, sent_at = None, now
        if held is not None:
            yield held
    except OgaNpuError as e:
        raise errors(e) from e
    finally:
        stop.set()
        sm.queue.release()
        st.metrics.queue.labels(sm.id).set(sm.queue.depth)
        serverlog.generation_done(sm.id, last, sys.exc_info()[1])
        st.finished(sm.id, last)
