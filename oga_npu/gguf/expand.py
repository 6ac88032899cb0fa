"""The expanded form of a gguf-native model: its `/gguf.*` nodes computed once, not at every load.

A gguf-native folder keeps the GGUF's blocks compact (packed nibbles and high bits, 6-bit
K-quant factors, fp16 super-block scales) and nodes named `/gguf.*` that rebuild
MatMulNBits' codes, scales and offsets; onnxruntime constant-folds them at every load, with
all of them in memory at once (a 1B Q4_K_M: 22 s and +5.6 GB peak). This module computes
each value those nodes hand to the rest of the graph alone (its subgraph run by onnxruntime's
CPU kernels, the ones its constant folding runs, so the bytes are the same), appends it to
the new model's data file and frees it: the peak is one tensor's intermediates. The graph is
otherwise unchanged (names, opsets, metadata; no onnxruntime optimizations baked in), so the
result is the same on every machine.

    $OGA_NPU_HOME/cache/expanded/<content hash>-v<FORMAT_VERSION>/
    ├── model.onnx, model.onnx.data    no /gguf.* nodes: their values as plain initializers
    ├── model.engine.onnx              (webgpu) the same, on the same data file
    ├── genai_config.json, tokenizer…  hard links to the user's folder (copies where links fail)
    └── done.json                      the folder, seconds, bytes
    .<key>.tmp-<pid>/                  one being made (or killed): never loaded, removed
    <key>.lock                         held while one is made

The entry is renamed into place when complete, so a folder under its key is always finished.
The user's folder is never changed; `load()` opens the entry, `oga-npu rm` deletes it.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ..workdir import home, link_or_copy, read_json, write_json_atomic

log = logging.getLogger(__name__)

EXPAND_ENV = "OGA_NPU_EXPAND"  # 0: load the compact folder (onnxruntime folds the nodes)
FORMAT_VERSION = 1
NODE_PREFIX = "/gguf."
ALIGN = 4096  # big tensors start on a page (onnxruntime may map them)
ALIGN_MIN = 1 << 20
_SKIP = {"oga_npu_manifest.json", "prepare.json", ".lock", "done.json"}  # done.json: a stage's, and the entry's own


def enabled() -> bool:
    return os.environ.get(EXPAND_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_root() -> Path:
    return home() / "cache" / "expanded"


def is_gguf_native(manifest: dict | None) -> bool:
    """Whether a prepared folder holds `/gguf.*` nodes (its build ran the gguf-native pass)."""
    build = ((manifest or {}).get("stages") or {}).get("build") or {}
    return bool((build.get("detail") or {}).get("gguf_native"))


def entry_dir(content_hash: str) -> Path:
    return cache_root() / f"{content_hash[:16]}-v{FORMAT_VERSION}"


def entries_of(content_hash: str) -> list[Path]:
    """Every cache entry of one folder content (all format versions, finished or not)."""
    root = cache_root()
    if not content_hash or not root.is_dir():
        return []
    key = content_hash[:16]
    return [p for p in root.iterdir() if p.name.startswith((f"{key}-v", f".{key}-v"))]


def wanted(manifest: dict | None) -> str | None:
    """The cache key of the expanded form a prepared folder is opened from (its content hash),
    or None: not gguf-native, or expansion off."""
    if not enabled() or not is_gguf_native(manifest) or not (manifest or {}).get("content_hash"):
        return None
    return manifest["content_hash"]


def finished_entry(content_hash: str) -> Path | None:
    """The finished cache entry under `content_hash`, or None (missing or damaged); reads only."""
    dst = entry_dir(content_hash)
    return dst if _finished(dst) else None


def loadable(folder: Path, manifest: dict | None) -> Path:
    """The folder onnxruntime-genai should open for `folder`: its expanded form (made here when
    missing) for a gguf-native model, else `folder` itself. Never fails: when the cache cannot
    be written, one warning and the compact folder."""
    key = wanted(manifest)
    return make(folder, key) if key else folder


def make(folder: Path, content_hash: str) -> Path:
    """`ensure`, or `folder` itself with one warning when the expanded form cannot be made."""
    try:
        return ensure(folder, content_hash)
    except OSError as e:  # a read-only home, a full disk
        log.warning(
            "could not write the expanded form of %s in %s (%s); loading the compact folder (slower, more memory)",
            folder.name,
            cache_root(),
            e,
        )
    except Exception as e:  # noqa: BLE001 - the compact folder loads whatever went wrong here
        log.warning(
            "could not expand the GGUF blocks of %s (%s: %s); loading the compact folder (slower, more "
            "memory; %s=0 skips this)",
            folder.name,
            type(e).__name__,
            e,
            EXPAND_ENV,
        )
    return folder


def for_stage(model_dir: Path) -> Path | None:
    """The expanded form of a build stage's folder during prepare (validate loads it, as every
    later load will): keyed by the content hash publish will give these files, recorded for the
    prepared folder (model_dir is OUT/stages/build). None where it does not apply or failed."""
    from ..workdir import DONE, STAGES_DIR, content_hash, sha256_file

    if not enabled() or not has_gguf_nodes(model_dir):
        return None
    owner = model_dir.parent.parent if model_dir.parent.name == STAGES_DIR else model_dir
    try:
        key = content_hash(
            {p.name: {"sha256": sha256_file(p)} for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != DONE}
        )
        return ensure(model_dir, key, owner=owner)
    except Exception as e:  # noqa: BLE001 - validate loads the compact folder then
        log.warning(
            "could not expand the GGUF blocks of %s (%s: %s); validating the compact folder",
            owner.name,
            type(e).__name__,
            e,
        )
        return None


def has_gguf_nodes(folder: Path) -> bool:
    """Whether a folder's ONNX graphs hold `/gguf.*` nodes (read without their weights)."""
    import onnx

    for f in folder.glob("*.onnx"):
        g = onnx.load(str(f), load_external_data=False).graph
        if any(n.name.startswith(NODE_PREFIX) for n in g.node):
            return True
    return False


def ensure(folder: Path, content_hash: str, owner: Path | None = None) -> Path:
    """The finished cache entry for `folder`, made under its lock when missing; `owner` is the
    prepared folder it is recorded for (default `folder`)."""
    from ..workdir import file_lock

    dst = entry_dir(content_hash)
    if _finished(dst):
        return dst

    def waiting():
        log.warning("another process is expanding %s: waiting for it", folder.name)

    with file_lock(dst.with_name(dst.name + ".lock"), on_wait=waiting):
        if _finished(dst):
            return dst
        for stale in dst.parent.glob(f".{dst.name}.tmp-*"):  # a killed make: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if dst.exists():  # damaged, or no done.json: not ours to trust
            shutil.rmtree(dst)
        _drop_older(owner or folder, dst)
        t0 = time.monotonic()
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        try:
            size = expand_folder(folder, tmp)
            write_json_atomic(
                tmp / "done.json",
                {
                    "folder": str((owner or folder).resolve()),
                    "content_hash": content_hash,
                    "format": FORMAT_VERSION,
                    "bytes": size,
                    "seconds": round(time.monotonic() - t0, 2),
                },
            )
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # progress, not a problem: stderr without a WARNING prefix
        print(
            f"expanded the GGUF blocks of {(owner or folder).name} for loading (once): {round(size / 1e6)} MB "
            f"in {dst} ({time.monotonic() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    return dst


def _finished(entry: Path) -> bool:
    """done.json there and the files of the size it says (a damaged entry is made again)."""
    done = read_json(entry / "done.json") if entry.is_dir() else None
    if not done:
        return False
    return sum(p.stat().st_size for p in entry.iterdir() if p.is_file() and p.name != "done.json") == done.get("bytes")


def _drop_older(folder: Path, keep: Path) -> None:
    """Entries made from the same folder before it was re-prepared (another content hash), and
    those of folders deleted since without `oga-npu rm` (a cache: re-made if needed)."""
    me = str(folder.resolve())
    for p in keep.parent.iterdir():
        if p != keep and p.is_dir() and not p.name.startswith("."):
            was = (read_json(p / "done.json") or {}).get("folder")
            if was == me or (was and not Path(was).exists()):
                shutil.rmtree(p, ignore_errors=True)
                p.with_name(p.name + ".lock").unlink(missing_ok=True)


def expand_folder(folder: Path, out: Path) -> int:
    """Write the expanded form of `folder` into `out` (a new folder); returns its bytes."""
    import onnx

    out.mkdir(parents=True)
    writers: dict[str, _DataWriter] = {}
    computed: dict[str, tuple] = {}
    try:
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.name in _SKIP:
                continue
            if f.suffix == ".onnx":
                m = onnx.load(str(f), load_external_data=False)
                _expand_graph(m, folder, out, f.name + ".data", writers, computed)
                onnx.save(m, str(out / f.name))
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.name not in _SKIP and not (out / f.name).exists() and f.name not in writers:
                link_or_copy(f, out / f.name)
    finally:
        for w in writers.values():
            w.close()
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


class _DataWriter:
    """One external data file of the expanded model, appended to tensor by tensor."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close(), the writer's own exit
        self.pos = 0
        self.copied: dict[tuple, tuple[int, int]] = {}

    def append(self, data) -> tuple[int, int]:
        n = memoryview(data).nbytes
        if n >= ALIGN_MIN and self.pos % ALIGN:
            pad = ALIGN - self.pos % ALIGN
            self.f.write(b"\0" * pad)
            self.pos += pad
        at = self.pos
        self.f.write(data)
        self.pos += n
        return at, n

    def copy(self, src: Path, offset: int, length: int) -> tuple[int, int]:
        """A stored tensor's bytes, once per source span (model.engine.onnx shares model.onnx's)."""
        key = (str(src), offset, length)
        if key not in self.copied:
            with open(src, "rb") as f:
                f.seek(offset)
                self.copied[key] = self.append(f.read(length))
        return self.copied[key]

    def close(self) -> None:
        self.f.close()


def _ext(t) -> dict | None:
    from onnx import TensorProto

    if t.data_location != TensorProto.EXTERNAL:
        return None
    return {kv.key: kv.value for kv in t.external_data}


def _set_ext(t, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


def _expand_graph(m, folder: Path, out: Path, data_name: str, writers: dict, computed: dict) -> None:
    """Replace the `/gguf.*` nodes of `m` by the values they hand on; every external
    initializer moves to the expanded data file (same name as the folder's)."""
    from onnx import numpy_helper

    g = m.graph
    gnodes = [n for n in g.node if n.name.startswith(NODE_PREFIX)]
    rest = [n for n in g.node if not n.name.startswith(NODE_PREFIX)]
    produced = {o: n for n in gnodes for o in n.output}
    used = {i for n in rest for i in n.input} | {o.name for o in g.output}
    wanted = list(dict.fromkeys(i for n in rest for i in n.input if i in produced))
    wanted += [o.name for o in g.output if o.name in produced and o.name not in wanted]
    inits = {t.name: t for t in g.initializer}
    default_loc = None

    def writer(location: str) -> _DataWriter:
        if location not in writers:
            writers[location] = _DataWriter(out / location)
        return writers[location]

    keep = []
    for t in g.initializer:
        if t.name not in used:
            continue
        ext = _ext(t)
        if ext is not None:  # a copy: `inits` keeps the folder's offsets for _compute
            t = copy.copy(t)
            loc = ext["location"]
            default_loc = default_loc or loc
            at, n = writer(loc).copy(folder / loc, int(ext.get("offset", 0)), int(ext["length"]))
            _set_ext(t, loc, at, n)
        keep.append(t)
    default_loc = default_loc or data_name
    for name in wanted:
        if name not in computed:
            arr = _compute(name, produced, inits, folder, m)
            t = numpy_helper.from_array(arr, name)
            if arr.nbytes >= 1024:
                at, n = writer(default_loc).append(np.ascontiguousarray(arr).data)
                t.ClearField("raw_data")
                _set_ext(t, default_loc, at, n)
            computed[name] = t
            del arr
        keep.append(computed[name])
    gone = set(produced) - set(wanted)
    vi = [v for v in g.value_info if v.name not in gone]
    del g.node[:]
    g.node.extend(rest)
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    g.value_info.extend(vi)


def _stored(t, folder: Path) -> np.ndarray:
    from onnx import helper, numpy_helper

    ext = _ext(t)
    if ext is None:
        return numpy_helper.to_array(t)
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    n = int(ext["length"]) // dt.itemsize
    a = np.fromfile(folder / ext["location"], dtype=dt, count=n, offset=int(ext.get("offset", 0)))
    return a.reshape(tuple(t.dims))


def _compute(name: str, produced: dict, inits: dict, folder: Path, m) -> np.ndarray:
    """One value of the `/gguf.*` nodes, alone: its subgraph, the stored tensors as inputs,
    run by onnxruntime's CPU kernels (those its constant folding runs) without optimizations."""
    import onnxruntime as ort
    from onnx import helper, shape_inference

    order, seen, stack = [], set(), [name]
    while stack:  # the nodes `name` needs
        v = stack.pop()
        n = produced.get(v)
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        order.append(n)
        stack += list(n.input)
    rank = {id(n): i for i, n in enumerate(produced.values())}
    nodes = sorted(order, key=lambda n: rank[id(n)])
    feeds, inputs = {}, []
    for n in nodes:
        for i in n.input:
            if not i or i in produced or i in feeds:
                continue
            if i not in inits:
                raise ValueError(f"{n.name}: input {i} is neither an initializer nor a /gguf.* value")
            t = inits[i]
            feeds[i] = _stored(t, folder)
            inputs.append(helper.make_tensor_value_info(i, t.data_type, list(t.dims)))
    graph = helper.make_graph(nodes, "gguf_expand", inputs, [helper.make_value_info(name, helper.TypeProto())])
    sub = helper.make_model(graph, opset_imports=list(m.opset_import), ir_version=m.ir_version)
    sub = shape_inference.infer_shapes(sub)
    vi = {v.name: v for v in list(sub.graph.value_info) + list(sub.graph.output)}
    if vi[name].type.tensor_type.elem_type == 0:
        raise ValueError(f"{name}: onnx infers no type for it")
    sub.graph.output[0].CopyFrom(vi[name])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.enable_cpu_mem_arena = False
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(sub.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = sess.run([name], feeds)[0]
    del sess, feeds
    return out
