"""ApiError and the OpenAI error shape: every refusal a route makes, and how library errors
(oga_npu/errors.py) and pydantic's validation errors become one."""

from __future__ import annotations

from pydantic import ValidationError

from ..errors import ChatTemplateError, ContextLengthError, GenerationError, GuidanceError, OgaNpuError
from .http import scrub_paths

RETRY_AFTER_S = 2


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
        echo: tuple[str, ...] = (),
        **extra,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers, self.extra = headers or {}, extra
        self.echo = echo  # what the client sent, quoted '...' in the message: never scrubbed

    def body(self) -> dict:
        return {
            "error": {
                "message": scrub_paths(self.message, self.echo),
                "type": self.type,
                "param": self.param,
                "code": self.code,
                **self.extra,
            }
        }


def not_supported(what: str, param: str) -> ApiError:
    return ApiError(400, f"{what} is not supported by oga-npu serve", param=param, code="not_supported")


def from_validation(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return ApiError(
            400, f"unknown field '{param}' (see the support table in the README)", param=param, code="unknown_field"
        )
    msg = err.get("msg", "invalid request")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def from_library(e: OgaNpuError, prompt_param: str = "messages", guidance_param: str = "response_format") -> ApiError:
    if isinstance(e, ContextLengthError):
        return ApiError(
            400,
            f"the request needs {e.prompt_tokens} prompt tokens + {e.max_tokens} max_tokens, "
            f"more than the model's {e.context}-token context (n_prompt_tokens={e.prompt_tokens}, "
            f"n_ctx={e.context})",
            param=prompt_param,
            code="context_length_exceeded",
            n_prompt_tokens=e.prompt_tokens,
            n_ctx=e.context,
        )
    if isinstance(e, GuidanceError):
        return ApiError(400, e.message, param=guidance_param, code="invalid_schema")
    if isinstance(e, (GenerationError, ChatTemplateError)):
        return ApiError(400, e.message, code="invalid_value")
    return ApiError(500, e.message, type_="server_error", code="generation_failed")


def busy(model_id: str, waiting: int, max_queue: int) -> ApiError:
    return ApiError(
        503,
        f"{model_id} is busy: {waiting} requests are waiting (--max-queue {max_queue})",
        type_="unavailable_error",
        code="server_busy",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", type_="server_error", code="shutting_down")
