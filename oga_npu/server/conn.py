"""Connections under `serve`: a header timeout, an idle keep-alive timeout, a cap on open
connections below the process's open-file limit, and one log line per condition per interval.

- A request head (request line and headers) must arrive within `header_timeout` s of the
  connection opening, or of its first byte after a response; a body may pause at most as
  long between reads. Past it the connection is closed (408 when part of a head came).
  A request in progress (a stream producing tokens) is never timed.
- Between requests a connection may sit idle `keep_alive` s (uvicorn's own timer).
- At most `cap` connections are open. At the cap a new connection closes the oldest one that
  is waiting for a request head (idle keep-alive, or a slow head: nginx's reusable
  connections); when every connection has a request in progress it gets a short 503 with
  Retry-After and Connection: close, and is closed at once.
- The cap sits `FD_RESERVE` below the open-file limit (model files, logs, worker pipes), and
  the soft limit is raised toward the hard one at start when the cap needs it.
- Each condition (timeouts, closes at the cap, refusals, failed accepts, asyncio's callback
  errors, uvicorn's "Invalid HTTP request") logs its first case at once, then one line per
  `LOG_INTERVAL_S` with the count: never one traceback per connection.

`Server` is uvicorn's Server with this protocol (uvicorn's h11 protocol plus the timers and the
cap), its own accept loop (`Acceptor`: asyncio's takes a whole backlog of sockets before any
protocol sees one) and the rate-limited exception handler on its loop. On Windows' proactor
loop asyncio's accept loop stays (no readers there); the cap and the timers still hold.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from dataclasses import dataclass

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import log as serverlog
from .errors import RETRY_AFTER_S

log = logging.getLogger("oga_npu.server")

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_MAX_CONNECTIONS = 1000
FD_RESERVE = 128  # files the server needs beside its sockets: model files, logs, worker pipes, imports
LOG_INTERVAL_S = 10.0
ACCEPT_BATCH = 64  # accepts per wake-up of the listening socket
ACCEPT_SLACK = 32  # sockets past the cap: new ones, and closing ones not yet gone
ACCEPT_RETRY_S = 0.5  # after accept() failed for want of files


@dataclass(frozen=True)
class ConnLimits:
    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive: float = DEFAULT_KEEP_ALIVE_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS


# ---------------------------------------------------------------- the open-file limit


def fit_file_limit(max_connections: int) -> tuple[int, str]:
    """The connection cap under RLIMIT_NOFILE, raising the soft limit toward the hard one when
    `max_connections` needs it; and a line for the log saying what was done."""
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE (sockets are not CRT files there)
        return max_connections, f"at most {max_connections} connections"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need, note = max_connections + FD_RESERVE, ""
    new = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < new:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            note, soft = f" (open-file limit raised from {soft} to {new})", new
        except (ValueError, OSError) as e:
            note = f" (the open-file limit {soft} could not be raised: {e})"
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections, f"at most {max_connections} connections" + note
    cap = soft - FD_RESERVE if soft >= 2 * FD_RESERVE else max(1, soft // 2)
    return cap, (
        f"at most {cap} connections, not {max_connections}: the open-file limit is {soft} (hard limit {hard}), "
        f"{soft - cap} kept for the server's own files{note}: raise it with `ulimit -n`"
    )


# ---------------------------------------------------------------- one line per condition per interval


class Tally:
    """Counts per condition: the first case logs at once, the rest as one line per interval."""

    def __init__(self, interval: float = LOG_INTERVAL_S):
        self.interval = interval
        self.pending: dict[str, list] = {}  # key -> [count, level, text with {n}]
        self.open: set[str] = set()  # keys inside an interval (a line is due at its end)

    def count(self, key: str, level: int, text: str, say_first: bool = True) -> None:
        """One case of `key`; `text` reads with {n} (the count) and {when}."""
        if key not in self.open:
            self.open.add(key)
            if say_first:
                log.log(level, "%s", text.format(n=1, when="just now"))
            self._later(key)
            return
        entry = self.pending.setdefault(key, [0, level, text])
        entry[0] += 1

    def _later(self, key: str) -> None:
        try:
            asyncio.get_running_loop().call_later(self.interval, self.flush, key)
        except RuntimeError:  # no loop (a unit test): no summary line, the next case logs at once
            self.open.discard(key)

    def flush(self, key: str) -> None:
        entry = self.pending.pop(key, None)
        if entry is None:
            self.open.discard(key)  # a quiet interval: the next case logs at once again
            return
        n, level, text = entry
        log.log(level, "%s", text.format(n=n, when=f"in the last {self.interval:g} s"))
        self._later(key)


# ---------------------------------------------------------------- the cap


def refusal(cap: int) -> bytes:
    """The 503 a connection past the cap gets, before its request is read."""
    body = json.dumps(
        {
            "error": {
                "message": f"the server has {cap} connections open, each with a request in progress "
                "(serve --max-connections); retry later",
                "type": "unavailable_error",
                "param": None,
                "code": "too_many_connections",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Door:
    """The open connections, and those waiting for a request head, oldest first."""

    def __init__(self, limits: ConnLimits, cap: int, tally: Tally):
        self.limits, self.cap, self.tally = limits, cap, tally
        self.open: set = set()  # admitted, not yet closed by the door
        self.waiting: dict = {}  # an ordered set: the first is the oldest
        self.sockets: set = set()  # every connection whose socket is open (evicted ones until they close)
        self.accepted = 0  # accepted sockets whose connection is not made yet
        self.on_room: list = []  # the acceptors' resume(): a socket closed
        self.refusal = refusal(cap)

    def held(self) -> int:
        """Sockets the connections hold: at most cap + ACCEPT_SLACK (the acceptor waits past it)."""
        return self.accepted + len(self.sockets)

    def made(self, conn) -> None:
        self.accepted = max(0, self.accepted - 1)
        self.sockets.add(conn)

    def lost(self, conn) -> None:
        self.left(conn)
        self.sockets.discard(conn)
        for resume in self.on_room:
            resume()

    def admit(self, conn) -> bool:
        """Room for `conn` (closing the oldest waiting connection at the cap), or False: refuse it."""
        if len(self.open) >= self.cap:
            victim = next(iter(self.waiting), None)
            if victim is None:
                self.tally.count(
                    "refused",
                    logging.WARNING,
                    f"refused {{n}} connection(s) {{when}} with 503: {self.cap} connections are open, "
                    "each with a request in progress (serve --max-connections)",
                )
                return False
            self.left(victim)
            victim.transport.abort()
            self.tally.count(
                "evicted",
                logging.WARNING,
                f"closed {{n}} connection(s) waiting for a request {{when}} to make room for new ones: "
                f"the connection cap ({self.cap}) is reached (serve --max-connections)",
            )
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def left(self, conn) -> None:
        self.open.discard(conn)
        self.waiting.pop(conn, None)

    def busy(self, conn) -> None:
        self.waiting.pop(conn, None)

    def idle(self, conn) -> None:
        if conn in self.open:
            self.waiting.pop(conn, None)
            self.waiting[conn] = None  # to the end: the newest waiting


# ---------------------------------------------------------------- the protocol


class Conn(H11Protocol):
    """uvicorn's h11 protocol with the header/body timer and the door (class attribute)."""

    door: Door

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.door.made(self)
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._got_bytes = False  # bytes of a head since the connection began waiting for one
        self._active = False  # a request head came; its response is not complete
        if not self.door.admit(self):
            transport.write(self.door.refusal)
            transport.close()
            return
        self._arm(self.door.limits.header_timeout)

    def _arm(self, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if seconds is None else self.loop.call_later(seconds, self._expired)

    def data_received(self, data: bytes) -> None:
        if not self._active and not self._got_bytes:
            self._got_bytes = True
            if self._timer is None:  # a head begins after a response: it has the whole timeout
                self._arm(self.door.limits.header_timeout)
        super().data_received(data)
        if self._active and self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._arm(self.door.limits.header_timeout)  # a body: at most this long between reads

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request head came: no timer while it runs
            self._active, self._got_bytes = True, False
            self.door.busy(self)
            self._arm(self.door.limits.header_timeout if self.cycle.more_body else None)  # a body to come

    def on_response_complete(self) -> None:
        self._active, self._got_bytes = False, False
        self._arm(None)  # uvicorn's keep-alive timer runs until the next byte
        self.door.idle(self)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        self.door.lost(self)
        super().connection_lost(exc)

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        t = f"{self.door.limits.header_timeout:g}"
        if self._active:
            if self.cycle is None or not self.cycle.more_body:
                return
            if self.flow.read_paused:  # the app has not read what came: not the client's stall
                self._arm(self.door.limits.header_timeout)
                return
            self.scope[serverlog.CUT_KEY] = "body stalled"  # type: ignore[literal-required]
            self.door.tally.count(
                "body",
                logging.INFO,
                f"closed {{n}} connection(s) {{when}} whose request body paused more than {t} s "
                "(serve --header-timeout)",
            )
        elif self._got_bytes:
            if not self.transport.get_write_buffer_size():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self.door.tally.count(
                "head",
                logging.INFO,
                f"closed {{n}} connection(s) {{when}} that sent no complete request head within {t} s "
                "(serve --header-timeout)",
            )
        self.door.left(self)
        if self.transport.get_write_buffer_size():  # a client that does not read: close() would wait on it
            self.transport.abort()
        else:
            self.transport.close()


# ---------------------------------------------------------------- accepting


class Acceptor:
    """Accepts on a listening socket while the connections hold fewer than cap + ACCEPT_SLACK
    sockets, and waits (new connections queue in the kernel) past it. asyncio's own accept
    loop takes up to `backlog` sockets a tick before any protocol sees them, so a burst of
    connections would run the process out of files before the cap could act."""

    def __init__(self, loop, sock, factory, door: Door):
        self.loop, self.sock, self.factory, self.door = loop, sock, factory, door
        self.fd, self.reading, self.closed, self.retry = sock.fileno(), False, False, None
        door.on_room.append(self.resume)
        sock.setblocking(False)

    def resume(self) -> None:
        if not self.reading and not self.closed and self.retry is None and self._room():
            self.loop.add_reader(self.fd, self.ready)
            self.reading = True

    def _room(self) -> bool:
        return self.door.held() < self.door.cap + ACCEPT_SLACK

    def _pause(self, retry: float | None = None) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False
        if retry is not None and self.retry is None:
            self.retry = self.loop.call_later(retry, self._retried)

    def _retried(self) -> None:
        self.retry = None
        self.resume()

    def ready(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self._room():
                return self._pause()
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:  # EMFILE and the like: the process's files are taken by others
                self.door.tally.count(
                    "accept", logging.WARNING, f"could not accept {{n}} connection(s) {{when}}: {e} ({file_limit()})"
                )
                return self._pause(retry=ACCEPT_RETRY_S)
            conn.setblocking(False)
            self.door.accepted += 1
            self.loop.create_task(self._connect(conn))
        return None

    async def _connect(self, conn) -> None:
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except Exception:  # noqa: BLE001 - the peer left before its transport was made
            self.door.accepted = max(0, self.door.accepted - 1)
            conn.close()
            self.resume()

    def close(self) -> None:
        self.closed = True
        self._pause()
        if self.retry is not None:
            self.retry.cancel()
        self.sock.close()


# ---------------------------------------------------------------- the loop's errors and uvicorn's warnings


def file_limit() -> str:
    try:
        import resource
    except ImportError:
        return "no open-file limit here"
    return f"the open-file limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}"


def exception_handler(tally: Tally):
    """asyncio's handler, one line per kind per interval: accept() at the open-file limit logs
    for every connection it cannot take (and on Python < 3.12 for every try in a backlog loop)."""

    def handle(loop, context: dict) -> None:
        message = str(context.get("message", "")).replace("{", "{{").replace("}", "}}")
        exc = str(context.get("exception")).replace("{", "{{").replace("}", "}}")
        if message.startswith("socket.accept() out of system resource"):
            tally.count(
                "accept",
                logging.WARNING,
                f"could not accept {{n}} connection(s) {{when}}: {exc} ({file_limit()})",
            )
            return
        key = "loop:" + message[:80]
        if key not in tally.open:
            loop.default_exception_handler(context)  # the first with its traceback
        tally.count(key, logging.ERROR, f"{{n}} more error(s) like this {{when}}: {message}", say_first=False)

    return handle


class UvicornWarnings(logging.Filter):
    """uvicorn's per-connection warnings ("Invalid HTTP request received.") through the tally."""

    def __init__(self, tally: Tally):
        super().__init__()
        self.tally = tally

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.msg not in ("Invalid HTTP request received.",):
            return True
        self.tally.count("invalid", logging.WARNING, "{n} invalid HTTP request(s) {when}, answered 400")
        return False


# ---------------------------------------------------------------- uvicorn's Server


class Server(uvicorn.Server):
    """uvicorn's Server with `Conn` connections and the rate-limited handlers."""

    def __init__(self, config: uvicorn.Config, limits: ConnLimits, cap: int):
        self.tally = Tally()
        door = Door(limits, cap, self.tally)
        config.http = type("BoundedConn", (Conn,), {"door": door})
        config.timeout_keep_alive = limits.keep_alive
        super().__init__(config)
        self.door = door

    async def startup(self, sockets=None) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(exception_handler(self.tally))
        self._filter = UvicornWarnings(self.tally)
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        self.acceptors: list[Acceptor] = []
        await super().startup(sockets)
        factory = functools.partial(
            self.config.http_protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=loop,
        )
        if not isinstance(loop, asyncio.SelectorEventLoop):  # Windows' proactor: no readers, its own accept
            return
        for server in getattr(self, "servers", []):  # asyncio's accept loop off, ours on (a dup of each socket)
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
                acceptor = Acceptor(loop, sock.dup(), factory, self.door)
                acceptor.resume()
                self.acceptors.append(acceptor)

    async def shutdown(self, sockets=None) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        await super().shutdown(sockets)
        logging.getLogger("uvicorn.error").removeFilter(self._filter)
