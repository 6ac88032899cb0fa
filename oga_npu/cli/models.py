"""The model store: `oga-npu models` (the table), `rm` (a prepared folder removed), `trace`
(what a prepare run did)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._cli_utils import AsJson, stdin_tty

Root = Annotated[Optional[Path], typer.Argument(metavar="[DIR]", help="Folder to list (default: the model store).")]
Available = Annotated[
    bool,
    typer.Option(
        "--available", help="List the catalog of ready-made models (`oga-npu pull NAME`), with what fits here."
    ),
]
Where = Annotated[bool, typer.Option("--where", help="Print only the model store's folder.")]
RmName = Annotated[
    str, typer.Argument(metavar="NAME", help="A model's name in the store (or the path of a model folder).")
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
OutsideStore = Annotated[bool, typer.Option("--outside-store", help="Allow a model folder outside the store.")]
TraceSpec = Annotated[
    str,
    typer.Argument(
        metavar="NAME|DIR",
        help="A model made by prepare (ideally with --trace): its name in the store or its folder.",
    ),
]


def models(root: Root = None, as_json: AsJson = False, where: Where = False, available: Available = False) -> None:
    """List the model store: parameters, bits, context, size, target, recipe, state; and the cache's size."""
    from .. import cache
    from ..store import ModelStore, format_params

    store = ModelStore(root)
    if available:
        _available(store, as_json)
        return
    if where:
        print(store.root)
        return
    rows = store.entries()
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=str))
        return
    print(f"store: {store.root} ({store.origin})" if root is None else f"models in {store.root}", file=sys.stderr)
    print(cache.summary(), file=sys.stderr)
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
    _amd_notes(rows)


def _amd_notes(rows) -> None:
    """For pulled AMD models: the Ryzen AI release each needs and whether it runs here (stderr)."""
    from ..pull.place import runs_here

    for r in rows:
        if r.runnable and (r.release or r.target in ("hybrid", "npu")):
            ok, why = runs_here(r.path)
            print(
                f"{r.name}: a Ryzen AI {r.release or '?'} {r.target} model; runs here: "
                + ("yes" if ok else f"no ({why})"),
                file=sys.stderr,
            )


def _available(store, as_json: bool) -> None:
    """The catalog: name, target, Ryzen AI release, size, context, fits here (and why not)."""
    from ..pull.catalog import listing, load, suggestion, this_machine
    from ..pull.run import installed_names

    machine = this_machine()
    rows = listing(installed_names(store), machine)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    w = max(len(r["name"]) for r in rows)
    print(f"{'NAME':<{w}}  {'TARGET':<6}  {'RELEASE':<7}  {'SIZE':>8}  {'CONTEXT':>7}  {'LICENSE':<10}  FITS HERE")
    for r in rows:
        fit = ("yes" if r["fits"] else "no") + f" ({r['why']})" + ("  [installed]" if r["installed"] else "")
        print(
            f"{r['name']:<{w}}  {r['target']:<6}  {r['release'] or '-':<7}  {r['size_bytes'] / 1e9:>6.2f}GB  "
            f"{r['context']:>7}  {r['license']:<10}  {fit}"
        )
    hint = suggestion(list(load()), machine)
    if hint:
        print(hint, file=sys.stderr)
    print("pull one: oga-npu pull NAME (or any org/repo, org/repo:QUANT)", file=sys.stderr)


def rm_cmd(model: RmName, yes: Yes = False, outside_store: OutsideStore = False) -> None:
    """Remove a prepared model from the store (only folders made by `oga-npu prepare`)."""
    from ..store import ModelStore, disk_usage

    store = ModelStore()
    entry = store.removal(model, outside=outside_store)
    what = (
        f"{entry.name} ({entry.path}, {entry.reason})"
        if entry.state == "link"
        else f"{entry.name} ({entry.path}, {disk_usage(entry.path) / 1e6:.1f} MB, {entry.state})"
    )
    if not yes and stdin_tty():
        if not typer.confirm(f"Remove {what}?", default=False, err=True):
            print("nothing was removed", file=sys.stderr)
            raise typer.Exit(1)
    freed, cached = store.remove(entry)
    if entry.state == "link":
        print(f"removed {entry.path} (the link only)")
        return
    also = f", {cached / 1e6:.1f} MB of it in the cache (its entries no other model uses)" if cached else ""
    print(f"removed {entry.path} ({(freed + cached) / 1e6:.1f} MB freed{also})")


def trace(spec: TraceSpec, as_json: AsJson = False) -> None:
    """Summarise a prepare run: commands, exit codes, durations, plugin zip, node counts."""
    from dataclasses import asdict

    from ..errors import ModelFolderError
    from ..store import ModelStore
    from ..trace import render, summarize

    model = ModelStore().resolve(spec)
    if not model.is_dir():
        raise ModelFolderError(f"{model} is not a folder", "pass a model folder made by `oga-npu prepare`")
    s = summarize(model)
    print(json.dumps(asdict(s), indent=2) if as_json else render(s))
