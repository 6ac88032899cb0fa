"""What the commands print besides their results: stage progress and bench progress on
stderr (a live line on a terminal, plain lines otherwise), durations, generation timings.
Results (tables, paths, JSON) go to stdout from the commands themselves."""

from __future__ import annotations

import sys
import threading
import time

from ._cli_utils import stderr_tty


def duration(secs: float) -> str:
    secs = int(round(secs))
    return f"{secs} s" if secs < 60 else f"{secs // 60} min {secs % 60:02d} s"


class StageProgress:
    """One line per stage on stderr. On a terminal a live line (elapsed time and the
    stage's own progress: AWQ layer, ETA); otherwise plain lines: a stage that runs past
    a few seconds prints a line when it starts and one at least every 10 s."""

    FIRST_S = 2.0  # plain mode: a stage this short prints only its result line
    EVERY_S = 10.0

    def __init__(self, quiet: bool = False, tty: bool | None = None):
        self.quiet = quiet
        self.tty = stderr_tty() if tty is None else tty
        self.t0: dict[str, float] = {}
        self.lock = threading.Lock()
        self.current: tuple[str, str, str] | None = None  # (head, start message, latest update)
        self.live = None
        self.task = None
        self.stop_event = threading.Event()
        self.ticker: threading.Thread | None = None

    def __call__(self, event: str, stage: str, index: int, total: int, message: str) -> None:
        if self.quiet:
            return
        head = f"[{index}/{total}] {stage}"
        with self.lock:
            if event == "update":
                if self.current is not None and self.current[0] == head:
                    self.current = (head, self.current[1], message)
                    if self.live is not None:
                        self.live.update(self.task, description=self._line(time.monotonic()))
                return
            if event == "start":
                self._stop()
                self.t0[stage] = time.monotonic()
                self.current = (head, message, "")
                if self.tty:
                    self._start_live()
                else:
                    self._start_ticker()
                return
            self._stop()
            if event == "note":
                print(f"note: {message}", file=sys.stderr, flush=True)
            elif event == "skip":
                print(f"{head} … {message}", file=sys.stderr, flush=True)
            elif event == "done":
                secs = time.monotonic() - self.t0.get(stage, time.monotonic())
                msg = message if message else f"done ({secs:.0f} s)"
                print(f"{head} … {msg}", file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        head, start, update = self.current  # type: ignore[misc]
        t0 = self.t0.get(head.split()[-1], now)
        parts = [p for p in (start, update) if p]
        return f"{head} … {duration(now - t0)}" + (f": {' · '.join(parts)}" if parts else "")

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.live = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            console=Console(stderr=True),
            transient=True,
            refresh_per_second=4,
        )
        self.task = self.live.add_task(self._line(time.monotonic()), total=None)
        self.live.start()
        self._start_ticker()  # the elapsed time in the line moves even when the tool is quiet

    def _start_ticker(self) -> None:
        self.stop_event = threading.Event()
        stop = self.stop_event

        def tick() -> None:
            wait = 1.0 if self.tty else self.FIRST_S
            while not stop.wait(wait):
                with self.lock:
                    if stop.is_set() or self.current is None:
                        return
                    line = self._line(time.monotonic())
                    if self.live is not None:
                        self.live.update(self.task, description=line)
                    else:
                        print(line, file=sys.stderr, flush=True)
                wait = 1.0 if self.tty else self.EVERY_S

        self.ticker = threading.Thread(target=tick, daemon=True)
        self.ticker.start()

    def _stop(self) -> None:
        self.stop_event.set()
        self.current = None
        if self.live is not None:
            self.live.stop()
            self.live = None

    def close(self) -> None:
        with self.lock:
            self._stop()


class BenchProgress:
    """A progress bar on a terminal, one line per point otherwise (stderr)."""

    def __init__(self, total: int):
        self.total, self.done, self.bar, self.task = total, [], None, None

    def __enter__(self):
        if stderr_tty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("bench", total=self.total)
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def update(self, i: int, n: int, rec) -> None:
        if rec is None:
            if self.bar:
                self.bar.update(self.task, description=f"prompt {n}")
            return
        self.done.append(rec)
        if self.bar:
            self.bar.update(self.task, advance=1)
        else:
            what = (
                f"skipped ({rec.skipped})"
                if rec.skipped
                else f"TTFT {rec.ttft_avg_ms:.0f} ms, decode {rec.decode_tps_avg:.1f} tok/s"
            )
            print(f"[{i + 1}/{self.total}] prompt {n}: {what}", file=sys.stderr, flush=True)


def print_timings(ev) -> None:
    ttft = f"{ev.ttft * 1000:.0f} ms" if ev.ttft else "-"
    pre = f"{ev.prefill_tps:.1f}" if ev.prefill_tps else "-"
    dec = f"{ev.decode_tps:.1f}" if ev.decode_tps else "-"
    print(
        f"[{ev.runtime}] prompt {ev.prompt_tokens} tok, generated {ev.generated_tokens} tok, TTFT {ttft}, "
        f"prefill {pre} tok/s, decode {dec} tok/s, finish {ev.finish_reason}",
        file=sys.stderr,
    )
