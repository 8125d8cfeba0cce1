"""Errors as JSON: one body shape, the status each library error maps to, the handlers, and the
OpenAPI entries that declare every error status a route can return (clients and fuzzers rely on them)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    BadImageError,
    BadLabelsError,
    BadVectorError,
    ClassifierNotFoundError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    NoLabelsError,
    NotIndexedError,
    ReadOnlyIndexError,
    RequestDroppedError,
    ServiceBusyError,
    UploadTooLargeError,
    VecsearchError,
    WeightsUnavailableError,
)
from .observe import REQUEST_ID_HEADER, current_request_id

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Every error response: `error` says what is wrong."""

    error: str
    type: str | None = None
    detail: list | None = None
    request_id: str | None = None


ERROR_TEXT = {
    400: "Bad request: a Host header this server does not answer to, or a malformed header.",
    401: "Missing or wrong token (only when the server has one).",
    403: "Writes are off on this server, the token given may only read, or a path outside the allowed roots.",
    409: "The index folder is read-only here: the write cannot be made.",
    404: "No such image or classifier, or the image's file is gone.",
    413: "Upload over the size cap.",
    422: "Invalid parameters, or an image that cannot be read (not an image, truncated, over the pixel cap).",
    503: "The server is busy (its queue is full: retry after the Retry-After header's seconds), the request was dropped "
    "before its model call (its deadline passed or its client went away), or its index or model is unusable.",
}


def responses(*codes: int, **more: dict) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can return (400 and 503 always), plus
    `_200=...`-style entries for its other statuses."""
    out: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in (400, 503, *codes)
    }
    out.update({int(k.lstrip("_")): v for k, v in more.items()})
    return out


def status_for(e: VecsearchError) -> int:
    """The HTTP status of a library error: the client's fault is 4xx, the server's own state 503."""
    if isinstance(e, UploadTooLargeError):
        return 413
    if isinstance(e, (NotIndexedError, ClassifierNotFoundError)):
        return 404
    if isinstance(e, (BadImageError, BadVectorError, NoLabelsError, BadLabelsError)):
        return 422
    if isinstance(e, ReadOnlyIndexError):
        return 409
    if isinstance(e, (ServiceBusyError, RequestDroppedError)):
        return 503
    if isinstance(e, (IndexNotFoundError, IndexCorruptError, IndexMismatchError, WeightsUnavailableError)):
        return 503
    return 400


def error_response(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An error body, with the id of the request it answers (the one in its X-Request-ID header)."""
    rid = current_request_id()
    if rid is not None:
        extra["request_id"] = rid
        headers = {**(headers or {}), REQUEST_ID_HEADER: rid}  # a 500 is sent outside the middleware that adds it
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Every error a client can cause becomes a 4xx body with an "error" key; anything else a logged 500."""

    @app.exception_handler(VecsearchError)
    async def vecsearch_error(request: Request, e: VecsearchError) -> JSONResponse:
        if isinstance(e, BadImageError):
            # The path of an upload is meaningless to the client; say only what is wrong.
            return error_response(422, f"Bad image: {e.reason}", type="BadImageError")
        if isinstance(e, (ServiceBusyError, RequestDroppedError)):
            retry = str(max(1, round(e.retry_after)))
            return error_response(503, str(e), type=type(e).__name__, headers={"Retry-After": retry})
        return error_response(status_for(e), str(e), type=type(e).__name__)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        # Never echo the input back (it may be an upload), so it is dropped before encoding.
        details = jsonable_encoder(
            [{k: v for k, v in d.items() if k != "input"} for d in e.errors()], custom_encoder={Exception: str}
        )
        parts = []
        for d in details:
            where = ".".join(str(x) for x in d.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {d.get('msg', 'invalid')}" if where else d.get("msg", "invalid"))
        return error_response(422, "; ".join(parts) or "Invalid request.", detail=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return error_response(500, "Internal error; see the server log.")
