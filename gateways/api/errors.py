"""Errors of the admin API: every one a JSON body `{"error": {"code", "message", "field"?}}`.

The codes are the command decision's (`gateways.decision.error_code`), so an integrator
sees the same code over NATS and HTTP; the HTTP status follows from the code. A well-formed
command the platform refuses (`invalid`: a rule, a referenced entity missing or in the wrong
state) is 409, as a conflict with the platform's state; a query parameter or another body
of the wrong form is 422. While the store cannot serve (PostgreSQL restarting) the answer
is 503 `unavailable` with `Retry-After`. Anything else not raised on purpose is `internal`
(500), logged with a reference and never shown.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from aggregates.errors import DomainRuleError, clipped
from gateways.decision import refusal
from kernel.contracts.access import IDEMPOTENCY_KEY_HEADER

log = logging.getLogger(__name__)

STATUS = {
    "malformed": 400, "unauthenticated": 401, "forbidden": 403, "not_found": 404,
    "unknown_command": 404, "method_not_allowed": 405, "conflict": 409,
    "idempotency_key_reused": 409, "unsupported_media_type": 415, "invalid": 422,
    "internal": 500, "unavailable": 503, "wait_timeout": 504,
}
ERROR_HEADER = "Cloudkernel-Error"
RETRY_AFTER_HEADER = "Retry-After"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What went wrong: a stable code, a message naming the field or rule, and detail."""

    code: str
    message: str
    field: str | None = None
    reason: str | None = None
    detail: dict[str, Any] | None = None


class ErrorDocument(msgspec.Struct, kw_only=True):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """A refusal decided by the API itself (query parameters, content type, waits)."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.code, self.field = code, field
        self.status = status or STATUS[code]


_encode = msgspec.json.Encoder().encode


def error_response(status: int, detail: ErrorDetail,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A JSON error response."""
    return web.Response(status=status, body=_encode(ErrorDocument(error=detail)),
                        content_type="application/json",
                        headers={ERROR_HEADER: detail.code, **(headers or {})})


def response_for(e: BaseException, request: web.Request,
                 idempotency_key: str | None = None) -> web.Response:
    """The error response for an exception raised while serving `request`; `idempotency_key`:
    the key a command ran under (answered in its header, so that a retry can reuse it)."""
    if isinstance(e, ApiError):
        return error_response(e.status, ErrorDetail(code=e.code, message=str(e),
                                                    field=e.field))
    body = refusal(e, where=f"api: {request.method} {request.path[:200]}",
                   key_id=request.headers.get("Cloudkernel-Key-Id", "-"),
                   idempotency_key=idempotency_key)
    status = STATUS.get(body.code, 500)
    if isinstance(e, DomainRuleError) or (body.code == "invalid" and idempotency_key):
        # a well-formed command refused by the platform's rules or state: it may succeed
        # later, and another body (the document's form) would not change that
        status = 409
    headers = {} if idempotency_key is None else {IDEMPOTENCY_KEY_HEADER: idempotency_key}
    if body.retry_after is not None:
        headers[RETRY_AFTER_HEADER] = str(body.retry_after)
    return error_response(status, ErrorDetail(code=body.code, message=body.message,
                                              field=body.field, reason=body.reason,
                                              detail=body.detail), headers)


def _http_error(e: web.HTTPException, request: web.Request) -> web.Response:
    if e.status == 404:
        code, message = "not_found", f"no route {request.method} {request.path[:200]}"
    elif e.status == 405:
        allowed = sorted(getattr(e, "allowed_methods", ()) or ())
        code, message = "method_not_allowed", (f"{request.method} is not allowed on "
                                               f"{request.path[:200]}; allowed: "
                                               f"{', '.join(allowed)}")
        return error_response(405, ErrorDetail(code=code, message=message),
                              {"Allow": ", ".join(allowed)})
    elif e.status == 413:
        code, message = "malformed", "request body too large"
    elif e.status >= 500:
        code, message = "internal", "internal error"
    else:
        code, message = "malformed", clipped(e.reason)
    return error_response(e.status, ErrorDetail(code=code, message=message))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error body with a stable code."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _http_error(e, request)
    except Exception as e:
        return response_for(e, request)


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server log, where a request its parser refused (a header holding NUL or
    another control character, a malformed request line) is one WARNING line, not an ERROR
    with a traceback: the client sent it, the server is fine. aiohttp answers it 400."""

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        """Log a fault; a malformed request in one line."""
        if isinstance(exc_info, HttpProcessingError):
            remote = args[0] if args else "-"
            reason = " ".join(str(exc_info.message).split())
            self.logger.warning("refused a malformed HTTP request from %s (%d): %s", remote,
                                exc_info.code, clipped(reason, 200))
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


SERVER_LOG = ServerLog(logging.getLogger("aiohttp.server"), {})
