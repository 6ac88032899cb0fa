"""`oga-npu serve`: an OpenAI-compatible HTTP server over `stream_generate`.

A thin layer in rooms; a chat request goes route -> plan -> models -> worker -> stream:

- `routes.py`: one function per endpoint over the app's `ServerState` (state.py);
- `schemas.py`: the request bodies (pydantic); `errors.py`: ApiError, the OpenAI error shape;
- `plan.py`: request -> messages, guidance, `GenerationOptions`;
- `models.py`: the served models, each with its device queue (one request at a time);
- `lookup.py`: the listing, one model's entry, `using` (loaded and leased for a request);
- `procworker.py`, `child.py`: each loaded model in its own worker process (a crash there
  fails only its requests; reloaded on the next one); `watch.py`: the checks before each
  request (worker alive, restarts per minute, weights unchanged since load);
- `worker.py`: the decode loop in the model's thread, tokens handed to the event loop;
- `stream.py`: OpenAI envelopes, usage, SSE framing, whole answers;
- `ollama.py`: Ollama's API (/api/chat, /api/generate, ...) as a translation onto the above;
- `ollama_models.py`: Ollama's model descriptions (/api/tags, /api/ps, /api/show);
- `app.py`: create_app() (the door: Host header and API key; error handlers; routers);
- `http.py`: body size, hostile JSON, Host names, paths scrubbed from messages;
- `metrics.py` (Prometheus), `log.py` (a line per request), `web/` (the chat page at `/`);
- `conn.py`: the connections under uvicorn: header and keep-alive timeouts, the cap under
  the open-file limit, one log line per condition per interval;
- `run.py`: serve() under uvicorn.

The model provider is injected (`create_app(provider)`): tests may pass any object with
`.ready`, `.error`, `.models` (id -> ServedModel). Unsupported request features are refused
with 400 ("... is not supported"), never ignored silently; README.md has the table.
"""

from .app import create_app
from .conn import ConnLimits
from .run import serve

__all__ = ["ConnLimits", "create_app", "serve"]
