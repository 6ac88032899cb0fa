"""`oga-npu bench` (a prompt-length sweep, or AMD's model_benchmark), `bench compare`, `bench plot`.
The records and tables are bench.py's; here the options, the progress and where results go."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._cli_utils import Fallback, Provider, RaiEnvOption, model_folder
from ._output import BenchProgress

bench_app = typer.Typer(
    help="Prompt-length sweeps (TTFT, prefill and decode tok/s, memory); `bench compare A B`.",
    invoke_without_command=True,
    no_args_is_help=False,
)

BenchModel = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        help="A model's name in the store or a model folder. Default: the store's only model.",
        show_default=False,
    ),
]
Lengths = Annotated[str, typer.Option("--lengths", "-l", help="Prompt lengths, e.g. 128,256,512.")]
Gen = Annotated[int, typer.Option("--gen", "-g", help="Tokens generated per run (EOS ignored).")]
Reps = Annotated[int, typer.Option("--reps", "-r", help="Timed repetitions per length.")]
Warmups = Annotated[int, typer.Option("--warmups", "-w", help="Untimed warmup runs per length.")]
PromptFile = Annotated[
    Optional[Path],
    typer.Option("--prompt-file", "-f", help="Text the prompts are cut from (default: built-in local text)."),
]
JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Append one JSON record per point (JSON lines).")]
CsvOut = Annotated[Optional[Path], typer.Option("--csv", help="Append one CSV row per point.")]
PlotOut = Annotated[Optional[Path], typer.Option("--plot", help="PNG of TTFT and decode tok/s against prompt length.")]
Label = Annotated[Optional[str], typer.Option("--label", help="Name of this run in plots.")]
ModelBenchmark = Annotated[
    bool, typer.Option("--model-benchmark", help="Run AMD's model_benchmark with the same settings.")
]
RaiVersion = Annotated[
    Optional[str], typer.Option("--rai-version", help="Ryzen AI release for model_benchmark's flags.")
]


@bench_app.callback()
def bench(
    ctx: typer.Context,
    model_spec: BenchModel = None,
    lengths: Lengths = "128,256,512,1024,2048",
    gen: Gen = 128,
    reps: Reps = 5,
    warmups: Warmups = 1,
    prompt_file: PromptFile = None,
    json_out: JsonOut = None,
    csv_out: CsvOut = None,
    plot_out: PlotOut = None,
    label: Label = None,
    provider: Provider = None,
    fallback: Fallback = None,
    model_benchmark: ModelBenchmark = False,
    rai_version: RaiVersion = None,
    rai_env: RaiEnvOption = None,
) -> None:
    """Benchmark a prepared model over prompt lengths (AMD model_benchmark style)."""
    if ctx.invoked_subcommand is not None:
        return
    from ..bench import BenchConfig, RecordSink, parse_lengths, plot, table
    from ..textdata import load_text

    cfg = BenchConfig(parse_lengths(lengths), gen, reps, warmups, prompt_file)
    cfg.validate()
    model = model_folder(model_spec, "bench")
    text = load_text(str(prompt_file) if prompt_file else "builtin")
    sink = RecordSink(json_out, csv_out)
    if model_benchmark:
        recs = _model_benchmark(model, cfg, text, sink, provider, rai_version, rai_env)
    else:
        recs = _sweep(model, cfg, text, sink, provider, fallback, label, json_out)
    print(table(recs))
    if plot_out:
        plot({label or model.name: recs}, plot_out)
        print(f"plot: {plot_out}", file=sys.stderr)


def _model_benchmark(model, cfg, text, sink, provider, rai_version, rai_env) -> list:
    """AMD's model_benchmark on the folder, its records added to the sink."""
    from ..bench import record_metadata
    from ..model_benchmark import run_model_benchmark
    from ..workdir import folder_content_hash

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
    return recs


def _sweep(model, cfg, text, sink, provider, fallback, label, json_out) -> list:
    """The sweep in this process; Ctrl+C prints the points finished so far and exits 130."""
    from ..bench import sweep, table
    from ..model import load

    lm = load(model, provider=provider, fallback=fallback)
    where = lm.provider if lm.decoder == "oga" else f"{lm.provider} (direct decode)"
    print(
        f"bench {model} on {where}: lengths {list(cfg.lengths)}, {cfg.gen_tokens} generated, "
        f"{cfg.warmups} warmup + {cfg.reps} runs each, EOS ignored",
        file=sys.stderr,
    )
    recs = []
    progress = BenchProgress(len(cfg.lengths))
    try:
        with progress:
            recs = sweep(lm, cfg, text, sink, progress.update, label=label or model.name)
    except KeyboardInterrupt:
        recs = progress.done
        print("Interrupted: finished points are kept" + (f" in {json_out}" if json_out else ""), file=sys.stderr)
        print(table(recs))
        raise typer.Exit(130) from None
    return recs


@bench_app.command("compare")
def bench_compare(
    a: Annotated[Path, typer.Argument(metavar="A.json", help="Baseline JSON-lines file.")],
    b: Annotated[Path, typer.Argument(metavar="B.json", help="Other JSON-lines file.")],
) -> None:
    """Ratios B/A per prompt length."""
    from ..bench import compare, load_records

    print(compare(load_records(a), load_records(b)))


@bench_app.command("plot")
def bench_plot(
    files: Annotated[list[Path], typer.Argument(metavar="FILE.json", help="JSON-lines files from bench --json.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("bench.png"),
) -> None:
    """Several runs on one chart."""
    from ..bench import load_records, plot, run_label

    runs: dict = {}
    for f in files:
        recs = load_records(f)
        name = run_label(recs, f.stem)
        runs[name if name not in runs else f"{name} ({f.stem})"] = recs
    print(plot(runs, output))
