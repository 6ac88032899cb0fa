"""ONNX graph passes over a builder model for direct decoding on onnxruntime (engine.py).

The passes read and write only the graph; the weights stay in the external data file they
came from, so the result (model.engine.onnx) is saved beside model.onnx and shares it.

- `fuse_step_input`: the builder's decoder takes `input_ids` [B,S] and an `attention_mask`
  [B,T] whose only use (GroupQueryAttention models) is a sum per row: the total length.
  One float32 input `step` [B,S+1] (the new ids, then the total length) replaces both, so
  a decode step uploads one 8-byte tensor instead of two (each upload is a synchronous GPU
  submit on WebGPU).
- `add_greedy_token`: an int32 output `next_token` [B,1], the argmax of the last logits,
  computed on the device with small reductions (onnxruntime's WebGPU ArgMax over a
  128k vocabulary in one row took 4.7 ms per token; two stages of <=~512 elements cost
  microseconds), so a greedy step reads back 4 bytes instead of the logits.
- `chain_greedy`: the token and next length go back into the `step` buffer and a token
  history, so greedy runs follow each other without the host (see engine.py).
"""

from __future__ import annotations

import math
from pathlib import Path

STEP_INPUT = "step"
NEXT_TOKEN = "next_token"
STEP_OUTPUT = "step_next"
HISTORY = "history"
HISTORY_OUTPUT = "history_next"


class GraphPassError(ValueError):
    """The graph does not have the shape a pass expects (the caller falls back)."""


def _consumers(g, name: str) -> list:
    return [n for n in g.node if name in n.input]


def fuse_step_input(m) -> None:
    """Replace input_ids + attention_mask by one float32 input `step` (in place)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    g = m.graph
    inputs = {i.name: i for i in g.input}
    if "input_ids" not in inputs or "attention_mask" not in inputs:
        raise GraphPassError("the model has no input_ids/attention_mask pair")
    if "position_ids" in inputs:
        raise GraphPassError("the model takes position_ids (not a GroupQueryAttention build)")
    # attention_mask -> Cast(int32) -> ReduceSum(axis 1, keepdims 0): the total length per row
    mask_users = _consumers(g, "attention_mask")
    if len(mask_users) != 1 or mask_users[0].op_type != "Cast":
        raise GraphPassError("attention_mask is not consumed by a single Cast")
    cast = mask_users[0]
    sum_users = _consumers(g, cast.output[0])
    if len(sum_users) != 1 or sum_users[0].op_type != "ReduceSum":
        raise GraphPassError("the attention mask is used for more than its row sums")
    if helper.get_attribute_value(next(a for a in cast.attribute if a.name == "to")) != onnx.TensorProto.INT32:
        raise GraphPassError("the attention mask is not summed as int32")
    reduce_sum = sum_users[0]
    keepdims = next((helper.get_attribute_value(a) for a in reduce_sum.attribute if a.name == "keepdims"), 1)
    if keepdims != 0:
        raise GraphPassError("the attention mask's row sum keeps its dimension (not the builder's layout)")
    total = reduce_sum.output[0]
    batch = inputs["input_ids"].type.tensor_type.shape.dim[0]

    def const(name, values):
        g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    p = "/oga_npu/step"
    # float32, not int32: the WebGPU EP slices float tensors only (an int32 Slice fell back to
    # the CPU, which rules out graph capture); ids and lengths below 2**24 are exact in float32.
    nodes = [
        helper.make_node(
            "Slice",
            [STEP_INPUT, const(f"{p}/zero", [0]), const(f"{p}/minus1", [-1]), const(f"{p}/axis1", [1])],
            [f"{p}/ids_f"],
            name=f"{p}/ids",
        ),
        helper.make_node("Cast", [f"{p}/ids_f"], [f"{p}/ids"], to=onnx.TensorProto.INT32, name=f"{p}/ids_int"),
        helper.make_node(
            "Slice",
            [STEP_INPUT, f"{p}/minus1", const(f"{p}/end", [2**31 - 1]), f"{p}/axis1"],
            [f"{p}/total_2d"],
            name=f"{p}/total",
        ),
        helper.make_node("Squeeze", [f"{p}/total_2d", f"{p}/axis1"], [f"{p}/total_f"], name=f"{p}/squeeze"),
        helper.make_node("Cast", [f"{p}/total_f"], [total], to=onnx.TensorProto.INT32, name=f"{p}/total_int"),
    ]
    for n in g.node:
        n.input[:] = [f"{p}/ids" if i == "input_ids" else i for i in n.input]
    keep = [n for n in g.node if n is not cast and n is not reduce_sum]
    del g.node[:]
    g.node.extend(nodes + keep)
    for name in ("input_ids", "attention_mask"):
        g.input.remove(inputs[name])
    step = helper.make_tensor_value_info(STEP_INPUT, onnx.TensorProto.FLOAT, None)
    step.type.tensor_type.shape.dim.add().CopyFrom(batch)
    step.type.tensor_type.shape.dim.add().dim_param = "step_length"
    g.input.insert(0, step)


def add_greedy_token(m, vocab_size: int, chunk: int = 256) -> None:
    """Add output `next_token` int32 [1,1]: the first index of the max of the last logits."""
    import onnx
    from onnx import helper, numpy_helper

    g = m.graph
    if not any(o.name == "logits" for o in g.output):
        raise GraphPassError("the model has no logits output")
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise GraphPassError(f"opset {opset} < 18 (ReduceMax/ReduceMin take axes as an input from 18)")
    p = "/oga_npu/greedy"

    def init(name, arr):
        g.initializer.append(numpy_helper.from_array(arr, name))
        return name

    cur, rows, padded, nodes = _last_logits_padded(p, init, vocab_size, chunk)
    nodes += _first_argmax(p, init, cur, rows, chunk, padded, vocab_size)
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(NEXT_TOKEN, onnx.TensorProto.INT32, [1, 1]))


def _last_logits_padded(p: str, init, vocab_size: int, chunk: int):
    """Nodes: the last position's logits as float32 [V] (batch 1), padded to a multiple of
    `chunk` with the lowest float. Returns (output name, rows, padded length, nodes)."""
    import numpy as np
    import onnx
    from onnx import helper

    rows = math.ceil(vocab_size / chunk)
    padded = rows * chunk
    nodes = []
    # the last position's logits as float32 [V] (batch 1)
    nodes.append(
        helper.make_node(
            "Gather", ["logits", init(f"{p}/last", np.array(-1, np.int64))], [f"{p}/l3"], axis=1, name=f"{p}/gather"
        )
    )  # [B, V]
    nodes.append(helper.make_node("Cast", [f"{p}/l3"], [f"{p}/lf"], to=onnx.TensorProto.FLOAT, name=f"{p}/cast"))
    flat = f"{p}/lf"
    nodes.append(
        helper.make_node(
            "Reshape", [flat, init(f"{p}/flat_shape", np.array([-1], np.int64))], [f"{p}/flat"], name=f"{p}/flatten"
        )
    )
    cur = f"{p}/flat"
    if padded != vocab_size:
        nodes.append(
            helper.make_node(
                "Concat",
                [cur, init(f"{p}/pad", np.full(padded - vocab_size, -np.finfo(np.float32).max, np.float32))],
                [f"{p}/padded"],
                axis=0,
                name=f"{p}/pad",
            )
        )
        cur = f"{p}/padded"
    return cur, rows, padded, nodes


def _first_argmax(p: str, init, cur: str, rows: int, chunk: int, padded: int, vocab_size: int) -> list:
    """Nodes: the first index of the maximum of `cur` ([padded] float32) as int32 [1,1], found
    over a [rows, chunk] grid (two small reductions instead of one over the vocabulary)."""
    import numpy as np
    import onnx
    from onnx import helper

    shape = init(f"{p}/grid_shape", np.array([rows, chunk], np.int64))
    return [
        helper.make_node("Reshape", [cur, shape], [f"{p}/grid"], name=f"{p}/grid"),
        helper.make_node(
            "ReduceMax",
            [f"{p}/grid", init(f"{p}/ax1", np.array([1], np.int64))],
            [f"{p}/rowmax"],
            keepdims=1,
            name=f"{p}/rowmax",
        ),
        helper.make_node(
            "ReduceMax",
            [f"{p}/rowmax", init(f"{p}/ax0", np.array([0], np.int64))],
            [f"{p}/max"],
            keepdims=1,
            name=f"{p}/max",
        ),
        helper.make_node("Equal", [f"{p}/grid", f"{p}/max"], [f"{p}/is_max"], name=f"{p}/eq"),
        helper.make_node(
            "Where",
            [
                f"{p}/is_max",
                init(f"{p}/iota", np.arange(padded, dtype=np.float32).reshape(rows, chunk)),
                init(f"{p}/big", np.array(float(padded), np.float32)),
            ],
            [f"{p}/cand"],
            name=f"{p}/where",
        ),
        helper.make_node("ReduceMin", [f"{p}/cand", f"{p}/ax1"], [f"{p}/rowmin"], keepdims=1, name=f"{p}/rowmin"),
        helper.make_node("ReduceMin", [f"{p}/rowmin", f"{p}/ax0"], [f"{p}/min_raw"], keepdims=1, name=f"{p}/min_raw"),
        # NaN logits match no maximum: keep the id inside the vocabulary all the same
        helper.make_node(
            "Clip",
            [
                f"{p}/min_raw",
                init(f"{p}/first_id", np.array(0.0, np.float32)),
                init(f"{p}/last_id", np.array(float(vocab_size - 1), np.float32)),
            ],
            [f"{p}/min"],
            name=f"{p}/clip",
        ),
        helper.make_node("Cast", [f"{p}/min"], [NEXT_TOKEN], to=onnx.TensorProto.INT32, name=f"{p}/to_int"),
    ]


def chain_greedy(m) -> None:
    """Let greedy steps follow each other on the device without the host in between.

    Adds output `step_next` [1,2] = (greedy token, total + 1): bound to the same buffer as
    the `step` input, the next run reads what this one wrote. Adds input `history` [1,H]
    and output `history_next`, bound to one buffer: the token is scattered in place at its
    position (the total length), so the host reads the tokens of several steps at once.
    Needs fuse_step_input and add_greedy_token first. The writes to the shared buffers are
    the graph's last nodes (they depend on the token), after every read of `step`."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    g = m.graph
    names = {o for n in g.node for o in n.output}
    if "/oga_npu/step/total_f" not in names or "/oga_npu/greedy/min" not in names:
        raise GraphPassError("chain_greedy needs fuse_step_input and add_greedy_token first")
    p = "/oga_npu/chain"

    def init(name, arr):
        g.initializer.append(numpy_helper.from_array(arr, name))
        return name

    token = "/oga_npu/greedy/min"  # float [1,1]
    g.node.extend(
        [
            helper.make_node(
                "Reshape",
                ["/oga_npu/step/total_f", init(f"{p}/shape11", np.array([1, 1], np.int64))],
                [f"{p}/total"],
                name=f"{p}/total",
            ),
            helper.make_node(
                "Add", [f"{p}/total", init(f"{p}/one", np.array(1.0, np.float32))], [f"{p}/total1"], name=f"{p}/total1"
            ),
            helper.make_node("Concat", [token, f"{p}/total1"], [STEP_OUTPUT], axis=1, name=f"{p}/step_next"),
            helper.make_node("Cast", [f"{p}/total"], [f"{p}/pos"], to=onnx.TensorProto.INT32, name=f"{p}/pos"),
            helper.make_node(
                "ScatterElements", [HISTORY, f"{p}/pos", token], [HISTORY_OUTPUT], axis=1, name=f"{p}/history"
            ),
        ]
    )
    hist = helper.make_tensor_value_info(HISTORY, onnx.TensorProto.FLOAT, [1, "history_length"])
    g.input.append(hist)
    g.output.append(helper.make_tensor_value_info(STEP_OUTPUT, onnx.TensorProto.FLOAT, [1, 2]))
    g.output.append(helper.make_tensor_value_info(HISTORY_OUTPUT, onnx.TensorProto.FLOAT, [1, "history_length"]))


def engine_graph(model_file: Path, vocab_size: int, out_name: str = "model.engine.onnx", chain: bool = True) -> Path:
    """Write the passes' result beside model_file (weights shared); return its path.
    chain=False leaves out chain_greedy (scripts/webgpu_ortloop.py compares both)."""
    import onnx

    model_file = Path(model_file)
    if model_file.is_dir():
        model_file = model_file / "model.onnx"
    m = onnx.load(str(model_file), load_external_data=False)
    fuse_step_input(m)
    add_greedy_token(m, vocab_size)
    if chain:
        chain_greedy(m)
    out = model_file.with_name(out_name)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(m, str(tmp))
    tmp.replace(out)
    return out
