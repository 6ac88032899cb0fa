"""`oga-npu prepare`: a source (hub id, HF folder, .gguf) made into an OGA model folder.

The path through this package:

    PrepareRequest                       what the user asked (the CLI's options, or the library's call)
      -> request.resolve   -> Request    what it means: the source's kind and name, the recipe,
                                         the output folder (default: in the model store)
      -> plan.make_plan    -> Plan       preflight checks that write nothing (checks.py), the
                                         stages that apply, their StageContext (context.py), the
                                         runtime the folder is for, the build stage's effective
                                         builder options; for --dry-run, typed rows (DryRun)
      -> run.run           -> PrepareResult
           source step                   source.py: hub download / GGUF dequantize, into caches
           stages, in STAGES order       each in stages/<name>.partial/, renamed into place with
                                         a done.json holding its key; a re-run skips those that match
           publish                       the model files linked into the folder, the manifest last

`prepare(request)` is `run(make_plan(request, STAGES))`. Each stage module (see its
docstring for its inputs, outputs and tool) has NAME, PRODUCES_MODEL, applies(ctx),
key(ctx), describe(ctx, in_dir, out_dir) and run_stage(ctx, in_dir, out_dir, log_path).
"""

from . import build, hybrid, plugins, quantize, validate
from . import plan as _plan
from . import run as _run
from .context import PrepareResult, Progress, StageContext, StageReport, noop
from .request import PrepareRequest

# The source stage (hub download / GGUF dequantize) runs first and writes only to caches.
# Each stage's applies(ctx) says whether it runs for the target and recipe.
STAGES = (quantize, build, plugins, hybrid, validate)

__all__ = ["STAGES", "PrepareRequest", "PrepareResult", "StageContext", "StageReport", "prepare"]


def prepare(req: PrepareRequest, progress: Progress = noop) -> PrepareResult:
    return _run.run(_plan.make_plan(req, STAGES), progress)
