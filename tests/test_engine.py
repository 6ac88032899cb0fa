"""Direct decoding (oga_npu.webgpu.engine) against onnxruntime-genai on the CPU provider.

A webgpu build of the tiny model carries model.engine.onnx; here (no GPU) it runs on the
CPU provider, which executes the same graph, so every decoding mode can be checked token
for token against onnxruntime-genai's Generator on the same model.onnx.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import call, run_cli

from oga_npu.errors import ProviderError
from oga_npu.generate import GenerationOptions, stream_generate
from oga_npu.model import load
from oga_npu.webgpu import engine as eng
from oga_npu.webgpu.graphpass import GraphPassError, engine_graph, fuse_step_input


@pytest.fixture(scope="module")
def tiny_webgpu(tiny_webgpu_prepare) -> Path:
    """conftest's session WebGPU prepare of tiny_hf (shared with test_model_folder)."""
    return tiny_webgpu_prepare[0]


def tokens(lm, prompt, opts) -> list[int]:
    return [ev.token for ev in stream_generate(lm, prompt, opts) if ev.token is not None]


def open_both(path: Path, monkeypatch):
    monkeypatch.setenv(eng.DECODER_ENV, "oga")
    oga = load(path, provider="cpu")
    monkeypatch.setenv(eng.DECODER_ENV, "direct")
    direct = load(path, provider="cpu")
    assert oga.decoder == "oga" and direct.decoder == "direct"
    return oga, direct


def test_prepare_writes_the_engine_graph(tiny_webgpu):
    import onnx

    g = onnx.load(str(tiny_webgpu / eng.ENGINE_FILE), load_external_data=False).graph
    ins = [i.name for i in g.input]
    outs = [o.name for o in g.output]
    assert ins[0] == "step" and "history" in ins and "input_ids" not in ins and "attention_mask" not in ins
    assert {"logits", "next_token", "step_next", "history_next", "present.0.key"} <= set(outs)
    assert not any(
        i.data_location == onnx.TensorProto.DEFAULT and i.name.startswith("model.layers") for i in g.initializer
    ), "weights must stay in model.onnx.data, not be copied"
    manifest = json.loads((tiny_webgpu / "oga_npu_manifest.json").read_text())
    assert "direct_decode" in json.dumps(manifest)


@pytest.mark.parametrize("chain", [1, 3, 8])
def test_direct_greedy_matches_onnxruntime_genai(tiny_webgpu, monkeypatch, chain):
    oga, direct = open_both(tiny_webgpu, monkeypatch)
    assert direct._model is None  # no second copy of the weights in onnxruntime-genai
    direct.engine.chain = chain
    opts = GenerationOptions(max_tokens=21, temperature=0.0, ignore_eos=True)
    long = [100 + (i * 7) % 900 for i in range(37)]
    short = long[:5]
    # the second prompt is shorter: stale KV positions from the first must not leak in
    for ids in (long, short, long):
        want = tokens(oga, ids, opts)
        got = tokens(direct, ids, opts)
        assert len(want) == 21 and got == want


def test_direct_penalty_and_sampling(tiny_webgpu, monkeypatch):
    oga, direct = open_both(tiny_webgpu, monkeypatch)
    ids = [100 + (i * 13) % 700 for i in range(24)]
    plain = GenerationOptions(max_tokens=8, temperature=0.0, ignore_eos=True)
    pen = GenerationOptions(max_tokens=8, temperature=0.0, repetition_penalty=3.0, ignore_eos=True)
    # a random model rarely wants a token it has seen: put its next token into the prompt
    # until the penalty changes the answer, so the comparison below means something
    for _ in range(8):
        if tokens(oga, ids, pen) != tokens(oga, ids, plain):
            break
        ids = tokens(oga, ids, GenerationOptions(max_tokens=1, temperature=0.0, ignore_eos=True)) + ids
    else:
        pytest.fail("no prompt found where the repetition penalty matters")
    assert tokens(direct, ids, pen) == tokens(oga, ids, pen)  # host path: same arithmetic as OGA's
    assert tokens(direct, ids, plain) == tokens(oga, ids, plain)
    hot = GenerationOptions(max_tokens=16, temperature=1.5, seed=7, ignore_eos=True)
    a, b = tokens(direct, ids, hot), tokens(direct, ids, hot)
    assert a == b and len(a) == 16  # seeded: reproducible
    assert a != tokens(direct, ids, GenerationOptions(max_tokens=16, temperature=1.5, seed=8, ignore_eos=True))
    top1 = GenerationOptions(max_tokens=16, temperature=1.0, top_k=1, repetition_penalty=1.0, seed=1, ignore_eos=True)
    assert tokens(direct, ids, top1) == tokens(
        oga, ids, GenerationOptions(max_tokens=16, temperature=0.0, ignore_eos=True)
    )


def test_engine_grows_its_kv_buffers(tiny_webgpu, monkeypatch):
    monkeypatch.setattr(eng, "MIN_CAPACITY", 16)
    oga, direct = open_both(tiny_webgpu, monkeypatch)
    assert direct.engine.capacity == 16
    ids = [200 + i for i in range(20)]
    opts = GenerationOptions(max_tokens=12, temperature=0.0, ignore_eos=True)
    assert tokens(direct, ids, opts) == tokens(oga, ids, opts)
    assert direct.engine.capacity == 32


def test_sampler():
    logits = np.array([0.0, 5.0, 4.9, -3.0, 1.0], np.float32)
    assert eng.Sampler()(logits) == 1
    assert eng.Sampler(repetition_penalty=2.0)(logits, {1}) == 2  # 5/2 < 4.9
    picks = {eng.Sampler(temperature=5.0, top_k=2, seed=s)(logits) for s in range(60)}
    assert picks == {1, 2}
    assert {eng.Sampler(temperature=5.0, top_p=0.01, seed=s)(logits) for s in range(20)} == {1}
    wide = {eng.Sampler(temperature=50.0, seed=s)(logits) for s in range(200)}
    assert wide == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("size", [7, 1000])  # one partial block, and several blocks of 256
def test_sampler_frequencies_follow_softmax(size):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.5, size).astype(np.float32)
    logits[:3] += 4.0
    p = np.exp(logits / 0.9 - (logits / 0.9).max())
    p /= p.sum()
    s = eng.Sampler(temperature=0.9, seed=11)
    n = 20000
    counts = np.bincount([s(logits) for _ in range(n)], minlength=size)
    assert np.abs(counts / n - p).max() < 0.015
    top = np.argsort(-p)
    keep = top[: int(np.searchsorted(np.cumsum(p[top]), 0.7)) + 1]  # nucleus 0.7
    s = eng.Sampler(temperature=0.9, top_p=0.7, seed=12)
    drawn = np.bincount([s(logits) for _ in range(n)], minlength=size)
    assert set(np.flatnonzero(drawn)) == set(keep.tolist())
    assert np.abs(drawn[keep] / n - p[keep] / p[keep].sum()).max() < 0.015


@pytest.mark.parametrize("vocab", [7, 512, 1000])  # under one block, whole blocks, a padded last block
def test_greedy_token_subgraph(vocab):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from oga_npu.webgpu.graphpass import add_greedy_token

    def model(opset):
        g = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["logits"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, vocab])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, vocab])],
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])

    with pytest.raises(GraphPassError, match="opset 17"):
        add_greedy_token(model(17), vocab)
    m = model(21)
    add_greedy_token(m, vocab)
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(vocab)
    for _ in range(20):
        x = rng.normal(size=(1, 1, vocab)).astype(np.float32)
        x[0, 0, rng.integers(vocab, size=2)] = 9.0  # a tie: the first index wins, as in argmax
        assert s.run(["next_token"], {"x": x})[0].tolist() == [[int(np.argmax(x))]]
    nan = np.full((1, 1, vocab), np.nan, np.float32)
    assert 0 <= s.run(["next_token"], {"x": nan})[0][0, 0] < vocab


def test_graph_pass_refuses_a_layout_it_does_not_know(tiny_model):
    """The CPU build sums an int64 mask and takes its shape: no fused step input for it."""
    import onnx

    m = onnx.load(str(tiny_model / "model.onnx"), load_external_data=False)
    with pytest.raises(GraphPassError, match="attention_mask"):
        fuse_step_input(m)
    with pytest.raises(GraphPassError):
        engine_graph(tiny_model / "model.onnx", 49152)
    assert not (tiny_model / eng.ENGINE_FILE).exists()


def test_decoder_setting_errors(tiny_model, monkeypatch):
    monkeypatch.setenv(eng.DECODER_ENV, "direct")
    with pytest.raises(ProviderError, match="has no model.engine.onnx"):
        load(tiny_model)
    monkeypatch.setenv(eng.DECODER_ENV, "fast")
    with pytest.raises(ProviderError, match="is not a decoder"):
        load(tiny_model)
    r = run_cli("run", "-m", str(tiny_model), "hi", env={eng.DECODER_ENV: "direct"})
    assert r.returncode == 1 and "has no model.engine.onnx" in r.stderr and "Traceback" not in r.stderr


def test_doctor_says_which_decoder(tiny_webgpu, tmp_path, capsys):
    """The CLI in process (conftest.call)."""
    _, out, err = call(capsys, "doctor", "-m", str(tiny_webgpu))
    assert "decoding direct (model.engine.onnx" in out + err
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_webgpu.iterdir():  # a copied folder without the engine graph (an older prepare)
        if f.is_file() and f.name not in (eng.ENGINE_FILE, "oga_npu_manifest.json", "prepare.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    _, out, err = call(capsys, "doctor", "-m", str(bare))
    assert "Generator (no model.engine.onnx: re-run prepare --target webgpu" in out + err


def test_cli_run_says_direct_decode(tiny_webgpu, capsys, monkeypatch):
    """The CLI in process (conftest.call); the decoder chosen by the environment as before."""
    argv = ("run", "-m", str(tiny_webgpu), "--provider", "cpu", "Hello", "-n", "5", "-t", "0", "--timings")
    monkeypatch.setenv(eng.DECODER_ENV, "direct")
    code, out, err = call(capsys, *argv)
    assert code == 0, err
    assert "[cpu, direct decode]" in err
    monkeypatch.setenv(eng.DECODER_ENV, "oga")
    code2, out2, err2 = call(capsys, *argv)
    assert code2 == 0 and "[cpu]" in err2
    assert out == out2  # same greedy text either way


def test_eval_opens_onnxruntime_genai_lazily(tiny_webgpu, monkeypatch):
    """A direct-decoding model still serves eval: the OGA model opens on first use."""
    monkeypatch.setenv(eng.DECODER_ENV, "direct")
    lm = load(tiny_webgpu, provider="cpu")
    assert lm._model is None
    assert lm.model is not None and lm._model is lm.model
    assert load(tiny_webgpu, provider="cpu", decoder="oga").engine is None  # what `oga-npu eval` opens


def test_prepare_records_a_skipped_engine_graph(tmp_path, tiny_hf, capsys, inprocess_tools):
    """direct_decode on a CPU build (a mask layout the passes refuse): prepare still succeeds,
    says why in the stage log and result, and writes no engine graph. The CLI and its builder
    and validate tools run in this process (conftest.call, inprocess_tools)."""
    recipe = tmp_path / "cpu-direct.toml"
    recipe.write_text(
        (Path(__file__).resolve().parent.parent / "oga_npu" / "recipes" / "builder-int4.toml")
        .read_text()
        .replace(
            'session_options = { intra_op_num_threads = "auto" }',
            'session_options = { intra_op_num_threads = "auto" }\ndirect_decode = true',
        )
    )
    out = tmp_path / "m"
    code, _, err = call(capsys, "prepare", str(tiny_hf), "--recipe", str(recipe), "--output", str(out))
    assert code == 0, err
    assert not (out / eng.ENGINE_FILE).exists()
    manifest = (out / "oga_npu_manifest.json").read_text()
    assert "graph_passes_skipped" in manifest and "attention_mask" in manifest
    assert any("direct_decode skipped" in f.read_text() for f in (out / "logs").glob("*build*"))


def test_direct_matches_onnxruntime_genai_on_a_webgpu_adapter(request):
    """The real GPU path (graph capture, device buffers). On the lent H200,
    scripts/check_direct_decode.py did the same for SmolLM2's shape, capture on and off."""
    from oga_npu.webgpu import ep as webgpu

    ok, why = webgpu.available()
    if not ok:
        pytest.skip(f"no WebGPU adapter here: {why}")
    tiny_webgpu = request.getfixturevalue("tiny_webgpu")
    oga = load(tiny_webgpu, decoder="oga")
    direct = load(tiny_webgpu, decoder="direct")
    assert direct.provider == "webgpu" and direct.engine.capture
    for n, gen in ((17, 60), (3, 30)):
        ids = [100 + (i * 7) % 900 for i in range(n)]
        opts = GenerationOptions(max_tokens=gen, temperature=0.0, ignore_eos=True)
        assert tokens(direct, ids, opts) == tokens(oga, ids, opts)
