"""worker.py in process: the decode loop in the model's thread, a fake model (tests/server/fakes.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fakes import FakeDecoder, FakeLM

from oga_npu.errors import GenerationError
from oga_npu.server import worker
from oga_npu.server.errors import ApiError, from_library
from oga_npu.server.models import ServedModel
from oga_npu.server.state import ServerState


class _Provider:
    ready, error = True, None

    def __init__(self, *sms):
        self.models = {sm.id: sm for sm in sms}


def served(decoder, max_queue=4, name="fake") -> ServedModel:
    return ServedModel(name, FakeLM(), max_queue=max_queue, kv_reuse=False, generate=decoder)


def state(sm, interval=0.0) -> ServerState:
    return ServerState(_Provider(sm), stream_interval=interval)


def build():
    return [1, 2, 3], None


async def drain(st, sm, reuse=True, errors=from_library):
    run = await worker.begin(st, sm, build, reuse, errors)
    events = [run.first] + [ev async for ev in run.events]
    return events


def test_every_token_arrives_and_the_generation_is_recorded():
    dec = FakeDecoder(5)
    sm = served(dec)
    st = state(sm)
    events = asyncio.run(drain(st, sm))
    assert "".join(ev.text for ev in events) == "abcde"
    assert events[-1].finish_reason == "length" and dec.produced == [5]
    assert st.last["completion_tokens"] == 5 and st.last["prompt_tokens"] == 3
    assert sm.queue.depth == 0 and not sm.queue._lock.locked()
    text = st.metrics.text().decode()
    assert 'oga_npu_completion_tokens_total{model="fake"} 5.0' in text
    assert 'oga_npu_cancelled_requests_total{model="fake"}' not in text


def test_tokens_faster_than_the_interval_are_sent_together_first_at_once():
    sm = served(FakeDecoder(6))
    st = state(sm, interval=60.0)  # no chunk is due but the first and the finishing one

    async def go():
        run = await worker.begin(st, sm, build)
        return run.first, [ev async for ev in run.events]

    first, rest = asyncio.run(go())
    assert first.text == "a"
    assert [ev.text for ev in rest] == ["bcdef"] and rest[-1].finish_reason == "length"
    assert rest[-1].generated_tokens == 6


def test_a_closed_stream_stops_the_worker_within_a_token_and_frees_the_queue():
    permits = threading.Semaphore(3)
    dec = FakeDecoder(1000, permits=permits)
    sm = served(dec)
    st = state(sm)

    async def go():
        run = await worker.begin(st, sm, build)
        await run.events.__anext__()
        await run.events.aclose()  # the client went away; the worker waits for a 4th permit
        for _ in range(100):
            permits.release()
        assert await asyncio.to_thread(dec.closed.wait, 10)
        dec.permits, dec.n = None, 5
        return await drain(st, sm)  # the next request runs at once

    events = asyncio.run(go())
    assert dec.produced[0] <= 4, dec.produced  # the token in hand, then it stopped
    assert "".join(ev.text for ev in events) == "abcde" and sm.queue.depth == 0
    assert 'oga_npu_cancelled_requests_total{model="fake"} 1.0' in st.metrics.text().decode()


def test_past_max_queue_waiting_the_answer_is_busy_with_retry_after():
    gate = threading.Event()
    sm = served(FakeDecoder(3, gate=gate), max_queue=1)
    st = state(sm)

    async def go():
        first = asyncio.ensure_future(drain(st, sm))
        while sm.queue.running == 0:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(drain(st, sm))  # waits
        while sm.queue.waiting == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as e:
            await drain(st, sm)  # one too many
        gate.set()
        return e.value, await first, await second

    err, a, b = asyncio.run(go())
    assert err.status == 503 and err.code == "server_busy" and err.headers == {"Retry-After": "2"}
    assert "".join(ev.text for ev in a) == "".join(ev.text for ev in b) == "abc"


def test_a_library_error_in_the_decode_loop_is_mapped():
    sm = served(FakeDecoder(5, fail_at=2, error=GenerationError("the device said no")))
    st = state(sm)

    async def go():
        run = await worker.begin(st, sm, build)
        with pytest.raises(ApiError) as e:
            async for _ in run.events:
                pass
        return e.value

    err = asyncio.run(go())
    assert err.status == 400 and "the device said no" in err.message
    assert sm.queue.depth == 0


def test_a_prep_error_is_mapped_and_never_queues():
    sm = served(FakeDecoder(5))
    st = state(sm)

    def bad_build():
        raise GenerationError("the template failed")

    with pytest.raises(ApiError) as e:
        asyncio.run(worker.begin(st, sm, bad_build))
    assert e.value.status == 400 and sm.queue.depth == 0 and sm.queue._lock is None


def test_stopping_ends_a_running_stream_with_shutting_down():
    gate = threading.Event()
    sm = served(FakeDecoder(100, gate=gate))
    st = state(sm)

    async def go():
        gate.set()
        run = await worker.begin(st, sm, build)
        st.stopping = True
        with pytest.raises(ApiError) as e:
            async for _ in run.events:
                pass
        return e.value

    err = asyncio.run(go())
    assert err.code == "shutting_down" and err.status == 503 and sm.queue.depth == 0
