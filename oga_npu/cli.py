"""`oga-npu` command line: thin commands over the library, one error boundary.

Results go to stdout; progress, warnings and hints to stderr. Library errors become
`Error: ...` and `Fix: ...` on stderr with exit code 1 (130 for Ctrl+C);
OGA_NPU_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._version import __version__
from .errors import OgaNpuError

app = typer.Typer(
    name="oga-npu",
    help="Prepare Hugging Face models for ONNX Runtime GenAI (CPU, WebGPU, Ryzen AI NPU) and chat with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click-style help: flags read `--force`, not `--force <bool>`
    context_settings={"help_option_names": ["-h", "--help"]},
)

log = logging.getLogger("oga_npu")

# Shared options, declared once.
ModelDir = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        help="A model's name in the store (`oga-npu models`) or a model folder. Default: the store's only model.",
        show_default=False,
    ),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[
    Optional[float],
    typer.Option(
        "--temperature", "-t", help="0 = greedy. Default: the model's (README: Sampling defaults).", show_default=False
    ),
]
TopP = Annotated[
    Optional[float],
    typer.Option("--top-p", help="Nucleus sampling, in (0, 1]. Default: the model's.", show_default=False),
]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="0 = off. Default: the model's.", show_default=False)]
RepetitionPenalty = Annotated[
    Optional[float], typer.Option("--repetition-penalty", help="1.0 = off. Default: the model's.", show_default=False)
]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
Provider = Annotated[
    Optional[str], typer.Option("--provider", help="cpu|webgpu|dml|cuda|ryzenai (default: the model's).")
]
Fallback = Annotated[
    Optional[str], typer.Option("--fallback", help="'cpu': run on the CPU if the provider is missing.")
]
RaiEnvOption = Annotated[
    Optional[Path],
    typer.Option(
        "--rai-env",
        help="The Ryzen AI release's env folder (its conda env, e.g. ...\\envs\\ryzen-ai-1.8.0); default: the active ryzen-ai-X.Y.Z conda env or RYZEN_AI_INSTALLATION_PATH.",
    ),
]
ChatTemplate = Annotated[Optional[Path], typer.Option("--chat-template", help="Jinja chat template file to use.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")]
Speculative = Annotated[
    Optional[str],
    typer.Option(
        "--speculative",
        metavar="ngram",
        help="Speculative decoding by n-gram prompt lookup (onnxruntime-genai >= 0.18; needs a model with full logits). Same output at temperature 0.",
    ),
]
DraftModel = Annotated[
    Optional[Path],
    typer.Option(
        "--draft-model",
        metavar="DIR",
        help="Speculative decoding with this smaller prepared model (same tokenizer, same target) as the drafter.",
    ),
]
DraftTokens = Annotated[int, typer.Option("--draft-tokens", help="Tokens proposed per speculative step (1-16).")]


def _stderr_tty() -> bool:
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _duration(secs: float) -> str:
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
        self.tty = _stderr_tty() if tty is None else tty
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
        return f"{head} … {_duration(now - t0)}" + (f": {' · '.join(parts)}" if parts else "")

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


def _model(spec: Optional[str], command: str) -> Path:
    """-m NAME|DIR as a folder; without -m the store's only model (or the choices, exit 2)."""
    from .store import ModelStore

    store = ModelStore()
    if spec is None:
        e = store.only_model(command)
        print(f"model: {e.name} (the only one in {store.root})", file=sys.stderr)
        return e.path
    return store.resolve(spec)


def _load_speculative(model, provider, fallback, speculative, draft_model, draft_tokens):
    """load() plus speculative.attach when --speculative/--draft-model was given."""
    from . import speculative as spec_mod
    from .model import load

    spec = spec_mod.parse(speculative, draft_model, draft_tokens)  # refused before the slow load
    lm = load(model, provider=provider, fallback=fallback)
    spec_mod.attach(lm, spec)
    return lm


def _options(max_tokens, temperature, top_p, top_k, seed, stop=None, repetition_penalty=None):
    from .generate import GenerationOptions

    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop or ()),
        repetition_penalty=repetition_penalty,
    )


# ---------------------------------------------------------------- prepare


@app.command()
def prepare(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Hugging Face id, local HF folder, or .gguf file.")],
    target: Annotated[str, typer.Option("--target", help="cpu | webgpu | dml | hybrid | npu")] = "cpu",
    recipe: Annotated[
        Optional[str],
        typer.Option(
            "--recipe",
            "-r",
            help="Recipe name (`oga-npu recipes` lists them) or a .toml path (default: gguf-native for a .gguf on cpu/webgpu, else default).",
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Model folder (default: <store>/<name>-<target> (a GGUF's name keeps its quantization), plus -<recipe> for a recipe other than the source's default; see `oga-npu models`).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild every stage, replacing a ready folder.")] = False,
    from_stage: Annotated[Optional[str], typer.Option("--from", help="Re-run from this stage on.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every step (commands, paths, environment); touch nothing.")
    ] = False,
    calib_file: Annotated[
        Optional[Path], typer.Option("--calib-file", help="Text file for AWQ/GPTQ calibration.")
    ] = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="DD_PLUGINS_TRACING=1 for the Ryzen AI tools; logs kept.")
    ] = False,
    rai_version: Annotated[
        Optional[str],
        typer.Option(
            "--rai-version",
            help="Ryzen AI release (1.6, 1.7, 1.7.1, 1.8); default: the Ryzen AI env's (its name, model-generate package or onnxruntime-genai pin).",
        ),
    ] = None,
    dd_plugins: Annotated[
        Optional[Path], typer.Option("--dd-plugins", help="Where compiled operator plugins go (default ./dd_plugins).")
    ] = None,
    skip_device_check: Annotated[
        bool, typer.Option("--skip-device-check", help="Build hybrid/npu models on a machine without the NPU.")
    ] = False,
    rai_env: RaiEnvOption = None,
    oga_version: Annotated[
        Optional[str],
        typer.Option(
            "--oga-version",
            help="The onnxruntime-genai the folder will run on (e.g. 0.11.2 for Ryzen AI 1.7): builder options it cannot run are left out. Default: the installed one; hybrid/npu: the Ryzen AI release's.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the model folder.")] = False,
) -> None:
    """Quantize (Quark), build (OGA model builder) and validate a model for a target."""
    from .errors import StageInterrupted

    try:  # typer turns a bare KeyboardInterrupt into a silent exit 130: say what happened
        from .prepare import PrepareRequest
        from .prepare import prepare as do_prepare

        req = PrepareRequest(
            source=source,
            target=target,
            recipe=recipe,
            output=output,
            force=force,
            from_stage=from_stage,
            dry_run=dry_run,
            calib_file=calib_file,
            trace=trace,
            rai_version=rai_version,
            dd_plugins=dd_plugins,
            skip_device_check=skip_device_check,
            rai_env=rai_env,
            oga_version=oga_version,
        )
        stage_progress = StageProgress(quiet or dry_run)
        try:
            result = do_prepare(req, stage_progress)
        finally:
            stage_progress.close()
    except KeyboardInterrupt as e:
        raise StageInterrupted("interrupted before the first stage started", "re-run the same command") from e
    if dry_run:
        print("\n".join(result.plan))
        return
    if not quiet:
        done = [r for r in result.stages if r.status == "done"]
        if not done:
            print(f"{result.output} is ready (every stage already done)", file=sys.stderr)
        validate = (result.manifest or {}).get("stages", {}).get("validate", {}).get("detail", {})
        if validate.get("answer"):
            print(
                f"validate: {validate['prompt']!r} -> {validate['answer'].strip()!r} ({validate['provider']})",
                file=sys.stderr,
            )
        if sys.stdout.isatty():  # a script that captures the path gives its own hint
            from .store import ModelStore

            store = ModelStore()
            name = result.output.name if store.inside(result.output) else result.output
            print(f"next: oga-npu chat -m {name}", file=sys.stderr)
    print(result.output)


# ---------------------------------------------------------------- run


@app.command()
def run(
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The prompt ('-' reads stdin).")],
    model: ModelDir = None,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")] = False,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    chat_template: ChatTemplate = None,
    provider: Provider = None,
    fallback: Fallback = None,
    timings: Annotated[bool, typer.Option("--timings", help="Print TTFT and tokens/s to stderr.")] = False,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
) -> None:
    """One-shot generation, streamed to stdout."""
    from .generate import stream_generate

    if prompt == "-":
        prompt = sys.stdin.read()
    opts = _options(max_tokens, temperature, top_p, top_k, seed, stop, repetition_penalty)
    opts.validate()
    template = chat_template.read_text(encoding="utf-8") if chat_template else None  # before the slow load
    lm = _load_speculative(_model(model, "run"), provider, fallback, speculative, draft_model, draft_tokens)
    if system and not raw:
        prompt_in = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    else:
        prompt_in = prompt
    last = None
    for ev in stream_generate(lm, prompt_in, opts, raw=raw, chat_template=template):
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        last = ev
    sys.stdout.write("\n")
    if timings and last:
        _print_timings(last)


def _print_timings(ev) -> None:
    ttft = f"{ev.ttft * 1000:.0f} ms" if ev.ttft else "-"
    pre = f"{ev.prefill_tps:.1f}" if ev.prefill_tps else "-"
    dec = f"{ev.decode_tps:.1f}" if ev.decode_tps else "-"
    print(
        f"[{ev.runtime}] prompt {ev.prompt_tokens} tok, generated {ev.generated_tokens} tok, TTFT {ttft}, "
        f"prefill {pre} tok/s, decode {dec} tok/s, finish {ev.finish_reason}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------- chat


@app.command()
def chat(
    model: ModelDir = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    chat_template: ChatTemplate = None,
    provider: Provider = None,
    fallback: Fallback = None,
    timings: Annotated[bool, typer.Option("--timings", help="Print TTFT and tokens/s after each answer.")] = False,
    kv_reuse: Annotated[
        bool,
        typer.Option(
            "--kv-reuse/--no-kv-reuse", help="Keep the KV cache between turns (prefill only the new message)."
        ),
    ] = True,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
) -> None:
    """Interactive chat (/help for commands). With stdin not a terminal: one message per line."""
    from .chat import ChatSession, repl

    opts = _options(max_tokens, temperature, top_p, top_k, seed, repetition_penalty=repetition_penalty)
    opts.validate()
    template = chat_template.read_text(encoding="utf-8") if chat_template else None  # before the slow load
    lm = _load_speculative(_model(model, "chat"), provider, fallback, speculative, draft_model, draft_tokens)
    session = ChatSession(lm, opts, system=system, chat_template=template, reuse=kv_reuse)
    repl(session, timings=timings)


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|DIR",
            help="A model's name in the store or a model folder (repeatable), loaded at start; the model id is the folder name. Default: every ready model of the store, loaded on demand.",
            show_default=False,
        ),
    ] = None,
    models_dir: Annotated[
        Optional[Path],
        typer.Option("--models-dir", metavar="DIR", help="Without -m: serve the models in DIR instead of the store."),
    ] = None,
    max_loaded: Annotated[
        int,
        typer.Option(
            "--max-loaded",
            metavar="N",
            help="Without -m: at most N models loaded at once; the least recently used idle one is unloaded first.",
        ),
    ] = 1,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (0.0.0.0 exposes the server to the network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            "--api-key",
            envvar="OGA_NPU_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every route but /health and the chat page; set OGA_NPU_API_KEY instead to keep it out of ps.",
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests that may wait per model; past it: 503 with Retry-After.")
    ] = 16,
    stream_interval: Annotated[
        float,
        typer.Option(
            "--stream-interval",
            metavar="MS",
            help="Streams send tokens that come faster than this together (the first at once); 0: one chunk per token.",
        ),
    ] = 30,
    provider: Provider = None,
    fallback: Fallback = None,
    max_body_mb: Annotated[
        float, typer.Option("--max-body-mb", help="Largest request body; past it: 413 before reading the rest.")
    ] = 4,
    metrics_key: Annotated[
        Optional[str],
        typer.Option(
            "--metrics-key",
            envvar="OGA_NPU_METRICS_KEY",
            help="A second key that opens /metrics only (a scraper need not hold the API key).",
        ),
    ] = None,
    allowed_host: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="Another Host header to answer (repeatable; '*' = any). Default: the bound address, and loopback names for a loopback bind.",
        ),
    ] = None,
    cors_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Let web pages from ORIGIN call the API (repeatable). Default: no CORS.",
        ),
    ] = None,
    no_kv_reuse: Annotated[
        bool, typer.Option("--no-kv-reuse", help="Prefill every prompt in full (no KV cache kept between requests).")
    ] = False,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics); without -m every ready model of the store, loaded on demand."""
    from .server import serve as run_server

    if max_queue < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--max-queue")
    if max_loaded < 1:
        raise typer.BadParameter("must be 1 or more", param_hint="--max-loaded")
    if model and models_dir is not None:
        raise typer.BadParameter(
            "serves a folder of models; -m names the models itself: give one or the other", param_hint="--models-dir"
        )
    if not 0 <= stream_interval <= 1000:
        raise typer.BadParameter("must be 0 to 1000 (milliseconds)", param_hint="--stream-interval")
    if api_key is None and os.environ.get("OGA_NPU_API_KEY") is not None:
        api_key = os.environ["OGA_NPU_API_KEY"]  # set but empty: click reads that as unset
    if api_key is not None and not api_key.strip():
        raise typer.BadParameter(
            "is empty (an empty key would let every request in): give a key or leave it out",
            param_hint="--api-key / OGA_NPU_API_KEY",
        )
    if metrics_key is not None and not metrics_key.strip():
        raise typer.BadParameter("is empty: give a key or leave it out", param_hint="--metrics-key")
    if not 0 < max_body_mb <= 1024:
        raise typer.BadParameter("must be more than 0 and at most 1024", param_hint="--max-body-mb")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"Warning: binding {host} makes the server reachable from other machines"
            + ("" if api_key else "; nothing protects it (pass --api-key)"),
            file=sys.stderr,
        )
    loader = None
    if speculative is not None or draft_model is not None:
        from . import speculative as spec_mod

        spec_mod.parse(speculative, draft_model, draft_tokens)  # a bad flag fails before the server starts
        loader = lambda f, provider=None, fallback=None: _load_speculative(
            f, provider, fallback, speculative, draft_model, draft_tokens
        )
    folders = [_model(m, "serve") for m in model] if model else None
    rc = run_server(
        folders,
        models_dir=models_dir,
        max_loaded=max_loaded,
        host=host,
        port=port,
        api_key=api_key,
        max_queue=max_queue,
        provider=provider,
        fallback=fallback,
        stream_interval_ms=stream_interval,
        max_body_mb=max_body_mb,
        metrics_key=metrics_key,
        allowed_host=tuple(allowed_host or ()),
        cors_origin=tuple(cors_origin or ()),
        kv_reuse=not no_kv_reuse,
        loader=loader,
    )
    if rc:
        raise typer.Exit(rc)


# ---------------------------------------------------------------- bench / eval

bench_app = typer.Typer(
    help="Prompt-length sweeps (TTFT, prefill and decode tok/s, memory); `bench compare A B`.",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(bench_app, name="bench")


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model_spec: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            metavar="NAME|DIR",
            help="A model's name in the store or a model folder. Default: the store's only model.",
            show_default=False,
        ),
    ] = None,
    lengths: Annotated[
        str, typer.Option("--lengths", "-l", help="Prompt lengths, e.g. 128,256,512.")
    ] = "128,256,512,1024,2048",
    gen: Annotated[int, typer.Option("--gen", "-g", help="Tokens generated per run (EOS ignored).")] = 128,
    reps: Annotated[int, typer.Option("--reps", "-r", help="Timed repetitions per length.")] = 5,
    warmups: Annotated[int, typer.Option("--warmups", "-w", help="Untimed warmup runs per length.")] = 1,
    prompt_file: Annotated[
        Optional[Path],
        typer.Option("--prompt-file", "-f", help="Text the prompts are cut from (default: built-in local text)."),
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Append one JSON record per point (JSON lines).")
    ] = None,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Append one CSV row per point.")] = None,
    plot_out: Annotated[
        Optional[Path], typer.Option("--plot", help="PNG of TTFT and decode tok/s against prompt length.")
    ] = None,
    label: Annotated[Optional[str], typer.Option("--label", help="Name of this run in plots.")] = None,
    provider: Provider = None,
    fallback: Fallback = None,
    model_benchmark: Annotated[
        bool, typer.Option("--model-benchmark", help="Run AMD's model_benchmark with the same settings.")
    ] = False,
    rai_version: Annotated[
        Optional[str], typer.Option("--rai-version", help="Ryzen AI release for model_benchmark's flags.")
    ] = None,
    rai_env: RaiEnvOption = None,
) -> None:
    """Benchmark a prepared model over prompt lengths (AMD model_benchmark style)."""
    if ctx.invoked_subcommand is not None:
        return
    from .bench import BenchConfig, RecordSink, parse_lengths, plot, run_model_benchmark, sweep, table
    from .model import load
    from .textdata import load_text

    cfg = BenchConfig(parse_lengths(lengths), gen, reps, warmups, prompt_file)
    cfg.validate()
    model = _model(model_spec, "bench")
    text = load_text(str(prompt_file) if prompt_file else "builtin")
    sink = RecordSink(json_out, csv_out)
    if model_benchmark:
        from .bench import record_metadata
        from .workdir import folder_content_hash

        recs = run_model_benchmark(
            model,
            cfg,
            text,
            model / "logs" / "bench",
            rai_version,
            record_metadata(provider=provider or "ryzenai", content_hash=folder_content_hash(model)),
            rai_env=rai_env,
        )
        for r in recs:
            sink.add(r)
    else:
        lm = load(model, provider=provider, fallback=fallback)
        where = lm.provider if lm.decoder == "oga" else f"{lm.provider} (direct decode)"
        print(
            f"bench {model} on {where}: lengths {list(cfg.lengths)}, {cfg.gen_tokens} generated, "
            f"{cfg.warmups} warmup + {cfg.reps} runs each, EOS ignored",
            file=sys.stderr,
        )
        recs = []
        progress = _BenchProgress(len(cfg.lengths))
        try:
            with progress:
                recs = sweep(lm, cfg, text, sink, progress.update, label=label or model.name)
        except KeyboardInterrupt:
            recs = progress.done
            print("Interrupted: finished points are kept" + (f" in {json_out}" if json_out else ""), file=sys.stderr)
            print(table(recs))
            raise typer.Exit(130)
    print(table(recs))
    if plot_out:
        plot({label or model.name: recs}, plot_out)
        print(f"plot: {plot_out}", file=sys.stderr)


class _BenchProgress:
    """A progress bar on a terminal, one line per point otherwise (stderr)."""

    def __init__(self, total: int):
        self.total, self.done, self.bar, self.task = total, [], None, None

    def __enter__(self):
        if _stderr_tty():
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


@bench_app.command("compare")
def bench_compare(
    a: Annotated[Path, typer.Argument(metavar="A.json", help="Baseline JSON-lines file.")],
    b: Annotated[Path, typer.Argument(metavar="B.json", help="Other JSON-lines file.")],
) -> None:
    """Ratios B/A per prompt length."""
    from .bench import compare, load_records

    print(compare(load_records(a), load_records(b)))


@bench_app.command("plot")
def bench_plot(
    files: Annotated[list[Path], typer.Argument(metavar="FILE.json", help="JSON-lines files from bench --json.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("bench.png"),
) -> None:
    """Several runs on one chart."""
    from .bench import load_records, plot, run_label

    runs: dict = {}
    for f in files:
        recs = load_records(f)
        name = run_label(recs, f.stem)
        runs[name if name not in runs else f"{name} ({f.stem})"] = recs
    print(plot(runs, output))


@app.command("eval")
def eval_cmd(
    model: ModelDir = None,
    ref: Annotated[
        Optional[str],
        typer.Option("--ref", help="HF folder of the reference model, 'auto' (the prepare source) or 'none'."),
    ] = "auto",
    ref_gguf: Annotated[
        Optional[Path],
        typer.Option(
            "--ref-gguf",
            help="Also score llama.cpp on this GGUF, same token windows (needs llama-cpp-python: the llamacpp extra).",
        ),
    ] = None,
    text: Annotated[
        Optional[Path],
        typer.Option(
            "--text", help="Text file (default: the evaluation part of the built-in text, never used for calibration)."
        ),
    ] = None,
    window: Annotated[int, typer.Option("--window", help="Tokens per window.")] = 512,
    windows: Annotated[int, typer.Option("--windows", help="Number of windows.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Perplexity of a prepared model, its fp32 reference in transformers, and llama.cpp (--ref-gguf).
    The result is recorded in the model folder's manifest (`quality`; `oga-npu models` shows it)."""
    import time as _t

    from .evaluate import (
        describe_windows,
        perplexity_hf,
        perplexity_llamacpp,
        perplexity_oga,
        record_quality,
        reference_dir,
        windows_of,
    )
    from .generate import encode
    from .model import load
    from .textdata import describe, load_text

    if ref_gguf is not None and not ref_gguf.is_file():
        raise OgaNpuError(f"--ref-gguf {ref_gguf} is not a file", "pass the .gguf file the model was prepared from")
    if ref_gguf is not None:
        from .evaluate import require_llamacpp

        require_llamacpp()
    spec = str(text) if text else "builtin"
    model = _model(model, "eval")
    lm = load(model, decoder="oga")  # scores through onnxruntime-genai: no second copy in the direct engine
    ids = encode(lm, load_text(spec, part="evaluation"))
    wins = windows_of(ids, window, windows)
    text_desc = describe(spec, "evaluation")
    print(describe_windows(text_desc, wins, len(ids)), file=sys.stderr)
    rows = []
    from .bench import record_metadata

    meta = record_metadata(lm)  # versions, device, provider and the folder's content hash
    steps = StageProgress()
    ref_dir = None if ref in (None, "none") else (reference_dir(lm) if ref == "auto" else Path(ref))
    if ref not in (None, "none", "auto") and not (Path(ref) / "config.json").is_file():
        raise OgaNpuError(f"--ref {ref} is not a HF model folder", "pass a folder with config.json, or --ref none")
    total = 2 if ref_dir is not None else 1
    t0 = _t.monotonic()
    steps("start", "score", 1, total, f"onnxruntime-genai on {lm.provider}, {len(wins)} windows of {window} tokens")
    try:
        ppl, n = perplexity_oga(lm, wins, lambda i, k: steps("update", "score", 1, total, f"window {i}/{k} done"))
    finally:
        steps.close()
    steps("done", "score", 1, total, "")
    rows.append(
        {
            "model": str(model),
            "engine": f"oga ({lm.provider})",
            "perplexity": ppl,
            "tokens": n,
            "seconds": round(_t.monotonic() - t0, 1),
            "meta": meta,
        }
    )
    if ref_dir is not None:
        t0 = _t.monotonic()
        steps("start", "reference", 2, total, f"transformers fp32 on the CPU, {len(wins)} windows")
        try:
            rppl, rn = perplexity_hf(
                ref_dir, wins, lambda i, k: steps("update", "reference", 2, total, f"window {i}/{k} done")
            )
        finally:
            steps.close()
        steps("done", "reference", 2, total, "")
        rows.append(
            {
                "model": str(ref_dir),
                "engine": "transformers fp32",
                "perplexity": rppl,
                "tokens": rn,
                "seconds": round(_t.monotonic() - t0, 1),
                "meta": {
                    **meta,
                    "provider": "transformers (cpu)",
                    "device": meta.get("device") if lm.provider == "cpu" else None,
                    "model_hash": None,
                },
            }
        )
    elif ref == "auto":
        print("note: no reference (the prepare source is not on disk); pass --ref HF_DIR", file=sys.stderr)
    if ref_gguf is not None:
        t0 = _t.monotonic()
        gppl, gn = perplexity_llamacpp(ref_gguf, wins)
        rows.append(
            {
                "model": str(ref_gguf),
                "engine": "llama.cpp",
                "perplexity": gppl,
                "tokens": gn,
                "seconds": round(_t.monotonic() - t0, 1),
            }
        )
    if as_json:
        for r in rows:
            r.update(text=text_desc, window=len(wins[0]), windows=len(wins))
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['engine']:<20} perplexity {r['perplexity']:>9.3f}  ({r['tokens']} tokens, {r['seconds']} s)  "
                f"{r['model']}"
            )
        if rows[0]["perplexity"] == float("inf"):
            print("note: the model produced NaN/inf logits (damaged weights or a broken build)", file=sys.stderr)
        for r in rows[1:]:
            print(f"vs {r['engine']}: {100 * (rows[0]['perplexity'] / r['perplexity'] - 1):+.1f}% perplexity")
    sys.stdout.flush()
    try:  # after the results: a read-only folder still gets its perplexity printed
        record_quality(model, rows, text_desc, len(wins[0]), len(wins))
    except OSError as e:
        print(
            f"Warning: the result was not recorded in {model}'s manifest ({e.strerror or e}); "
            "`oga-npu models` will not show it",
            file=sys.stderr,
        )


# ---------------------------------------------------------------- devices / doctor / hello


@app.command("devices")
def devices_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    pmode: Annotated[
        Optional[str],
        typer.Option(
            "--pmode", help="Set the NPU power mode with xrt-smi: default|powersaver|balanced|performance|turbo."
        ),
    ] = None,
) -> None:
    """What this machine can prepare and run: NPU, GPUs, providers, Ryzen AI tools."""
    from .devices import set_power_mode
    from .doctor import devices_report, webgpu_line

    if pmode:
        after = set_power_mode(pmode)
        print(f"NPU power mode: {after or pmode}")
        return
    rep = devices_report()
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
        return
    print(f"machine: {rep['os']}, {rep['cpu']}")
    print(f"NPU: {rep['summary']}")
    for n in rep["npus"]:
        print(
            f"  {n['name']} (PCI {n['pci_id']}, rev 0x{n['revision']:02x}) driver {n.get('driver') or '-'} "
            f"{n.get('driver_version') or ''}"
        )
    x = rep["xrt_smi"]
    print(
        "xrt-smi: "
        + (
            "not found"
            if not x
            else f"firmware {x.get('firmware')}, XRT {x.get('xrt_version')}, power mode {x.get('power_mode')}"
        )
    )
    print("GPUs: " + (", ".join(f"{g['vendor']} {g['pci_id']}" for g in rep["gpus"]) or "none found on PCI"))
    print(webgpu_line(rep["webgpu"]))
    print(f"onnxruntime-genai: {rep['runtime']['description']}")
    print("onnxruntime providers: " + ", ".join(rep["providers"]["onnxruntime"]))
    oga = rep["providers"]["onnxruntime_genai"]
    print(
        "onnxruntime-genai providers: " + ", ".join(f"{p} {'yes' if v['available'] else 'no'}" for p, v in oga.items())
    )
    if not oga["webgpu"]["available"]:
        print(f"  webgpu cannot run: {oga['webgpu'].get('why')}")
    tools = rep["ryzen_ai_tools"]
    print(
        "Ryzen AI tools: "
        + ", ".join(f"{t} {v['version'] or ''}".strip() if v["path"] else f"{t} not found" for t, v in tools.items())
    )
    env = rep.get("ryzen_ai_env")
    print(
        "Ryzen AI env: "
        + (
            "none found (--rai-env, a ryzen-ai-X.Y.Z conda env, RYZEN_AI_INSTALLATION_PATH)"
            if not env
            else f"{env['error']} ({env['fix']})"
            if "error" in env
            else f"{env['prefix']}: Ryzen AI {env['release']}, {env['onnxruntime_genai']}"
        )
    )
    print(
        "targets:  "
        + "  ".join(
            f"{t}: prepare {'yes' if v['prepare'] else 'no'}, run {'yes' if v['run'] else 'no'};"
            for t, v in rep["targets"].items()
        )
    )


@app.command()
def doctor(
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model", "-m", metavar="NAME|DIR", help="Also check this model (a name in the store or a folder)."
        ),
    ] = None,
) -> None:
    """Check versions, disk space and (with -m) a model folder; print a fix for each problem."""
    from .doctor import doctor as run_doctor
    from .errors import ModelNotFoundError
    from .store import ModelStore

    folder = None
    if model is not None:
        try:
            folder = ModelStore().resolve(model)
        except ModelNotFoundError:
            folder = Path(model)  # doctor reports the missing folder with the others
    rep = run_doctor(folder)
    for c in rep.checks:
        print(f"ok       {c}")
    for n in rep.notes:
        print(f"note     {n}")
    for p in rep.problems:
        print(f"PROBLEM  {p.what}\n         fix: {p.fix}")
    if rep.problems:
        raise typer.Exit(1)


@app.command()
def hello(
    workdir: Annotated[
        Optional[Path],
        typer.Option(
            "--workdir",
            help="Where the ONNX files and Quark's reports go (default: a temporary folder, removed after).",
        ),
    ] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs per session.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """AMD's hello-world: a small CNN, Quark XINT8, CPU vs NPU (NPU where present)."""
    from dataclasses import asdict

    from .hello import run_hello

    steps = StageProgress()
    try:
        r = run_hello(workdir, runs, steps)
    finally:
        steps.close()
    if as_json:
        print(json.dumps(asdict(r), indent=2))
        return
    print(f"times are per run, the mean of {r.runs} runs:")
    print(f"FP32 on CPU:  {r.fp32_cpu_ms:8.2f} ms")
    print(f"XINT8 on CPU: {r.int8_cpu_ms:8.2f} ms")
    if r.int8_npu_ms is not None:
        print(
            f"XINT8 on NPU: {r.int8_npu_ms:8.2f} ms  (speedup {r.int8_cpu_ms / r.int8_npu_ms:.1f}x over CPU; "
            f"max |NPU - CPU| {r.npu_vs_cpu_max_abs:.4f})"
        )
    else:
        print(f"XINT8 on NPU: skipped: {r.npu_skipped}")
    print(f"INT8 vs FP32 output: cosine {r.agreement_cosine:.5f}, mean relative error {r.agreement_rel_error:.4f}")
    print(f"models: {r.workdir}" if r.workdir else "models: not kept (--workdir DIR keeps them)")


# ---------------------------------------------------------------- models / recipes / env


@app.command()
def models(
    root: Annotated[
        Optional[Path], typer.Argument(metavar="[DIR]", help="Folder to list (default: the model store).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    where: Annotated[bool, typer.Option("--where", help="Print only the model store's folder.")] = False,
) -> None:
    """List the model store: parameters, bits, context, size, target, recipe, state."""
    from .store import ModelStore, format_params

    store = ModelStore(root)
    if where:
        print(store.root)
        return
    rows = store.entries()
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
        return
    print(f"store: {store.root} ({store.origin})" if root is None else f"models in {store.root}", file=sys.stderr)
    if not rows:
        print(f"no models in {store.root} (make one: oga-npu prepare SOURCE)", file=sys.stderr)
        return
    w = max([len(r.name) for r in rows] + [len("NAME")])
    q = max([len(r.quality_line()) for r in rows] + [len("PERPLEXITY (REFERENCES)")])
    print(
        f"{'NAME':<{w}}  {'PARAMS':>6}  {'BITS':<5} {'CONTEXT':>7}  {'SIZE':>9}  {'TARGET':<7} {'RECIPE':<12} "
        f"{'PERPLEXITY (REFERENCES)':<{q}}  STATE"
    )
    for r in rows:
        print(
            f"{r.name:<{w}}  {format_params(r.params):>6}  {r.bits or '-':<5} {r.context or '-':>7}  "
            f"{r.size_mb:>7.1f}MB  {r.target or '-':<7} {r.recipe or '-':<12} {r.quality_line():<{q}}  "
            f"{r.state_line()}"
        )


@app.command("rm")
def rm_cmd(
    model: Annotated[
        str, typer.Argument(metavar="NAME", help="A model's name in the store (or the path of a model folder).")
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    outside_store: Annotated[
        bool, typer.Option("--outside-store", help="Allow a model folder outside the store.")
    ] = False,
) -> None:
    """Remove a prepared model from the store (only folders made by `oga-npu prepare`)."""
    from .store import ModelStore, disk_usage

    store = ModelStore()
    entry = store.removal(model, outside=outside_store)
    what = (
        f"{entry.name} ({entry.path}, {entry.reason})"
        if entry.state == "link"
        else f"{entry.name} ({entry.path}, {disk_usage(entry.path) / 1e6:.1f} MB, {entry.state})"
    )
    if not yes and _stdin_tty():
        if not typer.confirm(f"Remove {what}?", default=False, err=True):
            print("nothing was removed", file=sys.stderr)
            raise typer.Exit(1)
    freed = store.remove(entry)
    print(f"removed {entry.path}" + (f" ({freed / 1e6:.1f} MB freed)" if entry.state != "link" else " (the link only)"))


def _stdin_tty() -> bool:
    return sys.stdin.isatty()


@app.command()
def trace(
    spec: Annotated[
        str,
        typer.Argument(
            metavar="NAME|DIR",
            help="A model made by prepare (ideally with --trace): its name in the store or its folder.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Summarise a prepare run: commands, exit codes, durations, plugin zip, node counts."""
    from dataclasses import asdict

    from .errors import ModelFolderError
    from .store import ModelStore
    from .trace import render, summarize

    model = ModelStore().resolve(spec)
    if not model.is_dir():
        raise ModelFolderError(f"{model} is not a folder", "pass a model folder made by `oga-npu prepare`")
    s = summarize(model)
    print(json.dumps(asdict(s), indent=2) if as_json else render(s))


@app.command()
def recipes() -> None:
    """List the recipes prepare can use."""
    from .recipe import list_recipes, load_recipe

    for name, path in list_recipes().items():
        try:
            desc = load_recipe(str(path)).description
        except OgaNpuError as e:
            desc = f"(invalid: {e.message})"
        print(f"{name:<12} {desc}  [{path}]")


@app.command()
def architectures(
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: every cell with its status and how it was verified.")
    ] = False,
    reasons: Annotated[bool, typer.Option("--reasons", help="Say why each refused or untested cell is so.")] = False,
) -> None:
    """Which model architectures prepare handles: architecture x recipe x target."""
    from .architectures import render, table

    print(json.dumps(table(), indent=2) if as_json else render(reasons=reasons))


@app.command()
def env() -> None:
    """Versions of oga-npu, OGA, ORT, Quark and the Ryzen AI tools."""
    from .versions import installed_versions

    for k, v in installed_versions().items():
        print(f"{k}: {v or 'not installed'}")
    import shutil

    for tool in ("onnx_utils", "model_generate", "model_benchmark", "xrt-smi"):
        print(f"{tool}: {shutil.which(tool) or 'not found'}")
    from .doctor import rai_env_info

    rai = rai_env_info()
    print(
        "ryzen-ai env: "
        + (
            "not found"
            if rai is None
            else rai.get("error") or f"{rai['prefix']} (Ryzen AI {rai['release']}, {rai['onnxruntime_genai']})"
        )
    )


def version_callback(value: bool) -> None:
    if value:
        print(f"oga-npu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output on stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors become a message and an exit code.
    Usage errors: the usage line and the problem, exit 2. Library errors and the
    environment's (no space, name too long, no permission, not found): `Error:` and
    `Fix:`, exit 1. "unexpected" is left for bugs."""
    from .guard import CRASH_LOG_ENV, enable_crash_log, should_supervise, supervise

    if os.environ.get(CRASH_LOG_ENV):  # the supervised child where there is no fork (Windows)
        enable_crash_log(os.environ[CRASH_LOG_ENV])
    if argv is None and should_supervise(sys.argv[1:]):
        code = supervise(sys.argv[1:])  # run/chat go on in a child: a native crash ends in one line
        if code is not None:
            sys.exit(code)
    debug = os.environ.get("OGA_NPU_DEBUG", "") not in ("", "0")
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=args or ["--help"], prog_name="oga-npu", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # typer.Exit(code) comes back as a return value without standalone mode
    except OgaNpuError as e:
        _fail(e, debug)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors (bad option, missing value, unknown command)
        if type(e).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, not an error
            print(e.format_message())
            sys.exit(0)
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:  # pragma: no cover - every typer usage error has show()
            print(f"Error: {e.format_message()}", file=sys.stderr)
        hint = _usage_hint(e, args)
        if hint:
            print(hint, file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    except BrokenPipeError:  # `oga-npu ... | head`: the reader left; not an error worth a message
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        except OSError:
            pass
        sys.exit(141)
    except OSError as e:
        from .errors import FileSystemError

        err = FileSystemError.from_os_error(e)
        if err is None:
            _unexpected(e, debug)
        _fail(err, debug)
    except Exception as e:  # noqa: BLE001 - the last resort: a bug
        _unexpected(e, debug)


BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def _usage_hint(e: Exception, args: list[str]) -> str:
    """One more line for the two usage errors people hit most: a value after a flag
    (`--dry-run true`) and an abbreviated option (`--temp`)."""
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    if "unexpected extra argument" in msg:
        for i, a in enumerate(args[1:], 1):
            if a.lower() in BOOL_WORDS and args[i - 1].startswith("--"):
                return f"Hint: {args[i - 1]} is a flag and takes no value: write {args[i - 1]} alone"
    name = getattr(e, "option_name", None)
    ctx = getattr(e, "ctx", None)
    if name and ctx is not None and name.startswith("--"):
        opts = sorted({o for p in ctx.command.params for o in getattr(p, "opts", []) if o.startswith(name)})
        if opts:
            return f"Hint: did you mean {' or '.join(opts)}?"
    return ""


def _fail(e: OgaNpuError, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    print(f"Error: {e.message}", file=sys.stderr)
    if e.fix:
        print(f"Fix: {e.fix}", file=sys.stderr)
    sys.exit(e.exit_code)


def _unexpected(e: BaseException, debug: bool) -> None:
    if debug:
        raise e
    print(f"Error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
    print("Fix: re-run with OGA_NPU_DEBUG=1 and report the traceback", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
