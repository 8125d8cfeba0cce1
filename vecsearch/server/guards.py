"""What a request must pass before a handler runs: the Host check, the upload cap and the token.

The Host check and the upload cap are ASGI middlewares (they act before FastAPI parses
anything); the token is a dependency, so `/docs` shows it as a security scheme.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, MutableMapping

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VecsearchError
from .errors import error_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MULTIPART_SLACK = 64 * 1024
"""Room for the multipart envelope around the file itself, on top of the upload cap."""


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> tuple[frozenset[str], bool]:
    """(host names the server answers to, whether any IP address is allowed) for a bind address.

    Loopback binds answer to the loopback names; a wildcard bind (0.0.0.0, ::) to any IP
    address and localhost; plus the names in `extra` (`--allow-host`; "*" allows any).
    """
    bind = bind.strip().strip("[]").lower()
    names = {bind, *(h.strip().strip("[]").lower().rstrip(".") for h in extra if h.strip())}
    any_ip = False
    try:
        ip = ipaddress.ip_address(bind)
        any_ip = ip.is_unspecified
        if ip.is_loopback or ip.is_unspecified:
            names.update(LOOPBACK_NAMES)
    except ValueError:
        if bind == "localhost":
            names.update(LOOPBACK_NAMES)
    return frozenset(names), any_ip


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_writes(bind: str, admin_token: str | None, allow_writes: bool) -> bool:
    """Whether the server takes writes: with an admin token, or when asked for on a loopback bind only
    (anyone who can reach a public address could otherwise change the index)."""
    if allow_writes and not admin_token and not is_loopback(bind):
        raise VecsearchError(
            f"Refusing writes without an admin token on {bind}: anyone on the network could change the index. "
            "Set an admin token (VECSEARCH_ADMIN_TOKEN, or a token file), or bind to 127.0.0.1."
        )
    return bool(admin_token or allow_writes)


def allowed_roots(roots: Iterable[str | os.PathLike]) -> tuple[Path, ...]:
    """The server-side folders writes may index by path, resolved (symlinks followed) once, at start."""
    out = []
    for root in roots:
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise VecsearchError(f"The allowed root {root} is not a folder.")
        out.append(path)
    return tuple(out)


class HostCheck:
    """ASGI middleware: answer only requests whose Host header names this server.

    A page on another site can make a browser send requests to a loopback server by
    pointing its own domain at 127.0.0.1 (DNS rebinding); the browser then sends that
    domain as Host. Only the allowed names pass (IP addresses too when the server binds
    to all addresses: a rebinding page cannot be reached under a bare IP).
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str], any_ip: bool):
        self.app = app
        self.hosts = hosts
        self.any_ip = any_ip

    def allowed(self, header: str) -> bool:
        host = header.strip().lower()
        if host.startswith("["):
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        host = host.rstrip(".")
        if not host:
            return False
        if "*" in self.hosts or host in self.hosts:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            if not self.allowed(header):
                await error_response(
                    400,
                    f"Host {header!r} is not served here: use the address the server listens on "
                    "(start it with --allow-host NAME to allow another name).",
                    type="BadHost",
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UploadLimit:
    """ASGI middleware: refuse request bodies over the cap before the multipart parser spools them.

    A declared Content-Length over the cap is refused unread; a chunked body is buffered
    up to the cap and refused as soon as it passes it.
    """

    def __init__(self, app: ASGIApp, limit: int, per_file: int | None = None):
        self.app = app
        self.limit = limit
        self.per_file = per_file

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await _refuse(scope, receive, send, 400, "Bad Content-Length header.")
                return
            if n > self.limit:
                await _refuse(scope, receive, send, 413, self.too_large())
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                await _refuse(scope, receive, send, 413, self.too_large())
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def too_large(self) -> str:
        whole = self.limit - MULTIPART_SLACK
        if self.per_file is None or self.per_file >= whole:
            return f"Upload too large: the cap is {whole} bytes."
        return f"Upload too large: the cap is {self.per_file} bytes a file, {whole} bytes a request."


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    # The body was not read, so the connection cannot be reused.
    async def with_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message, headers=list(message.get("headers", [])) + [(b"connection", b"close")])
        await send(message)

    await error_response(status, message, type="UploadTooLargeError" if status == 413 else "BadRequest")(
        scope, receive, with_close
    )


# Declared so /docs has an "Authorize" button for the token; the checks themselves are `authorised` and `admin`.
bearer = HTTPBearer(auto_error=False, description="The server's read token or admin token (only when it has one).")


def _given(request: Request) -> bytes:
    header = request.headers.get("authorization", "")
    # Starlette decodes headers as Latin-1 and query strings as UTF-8: compare the bytes sent.
    if header[:7].lower() == "bearer ":
        return header[7:].strip().encode("latin-1")
    return request.query_params.get("token", "").encode()


def _matches(given: bytes, token: str | None) -> bool:
    return bool(given) and token is not None and hmac.compare_digest(given, token.encode())


async def authorised(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The read check, when the server has a token: `Authorization: Bearer TOKEN` or `?token=TOKEN`,
    the read token or the admin token. async: no thread-pool hop per request."""
    svc = request.app.state.service
    if svc.token is None and svc.admin_token is None:
        return
    given = _given(request)
    if not (_matches(given, svc.token) | _matches(given, svc.admin_token)):  # both compared: no early exit
        raise StarletteHTTPException(401, token_help(request), headers={"WWW-Authenticate": "Bearer"})


async def admin(request: Request, _: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The write check: writes enabled by the operator, and the admin token when the server has one."""
    svc = request.app.state.service
    if not svc.writes:
        raise StarletteHTTPException(
            403,
            "Writes are off on this server: its operator enables them with an admin token "
            "(VECSEARCH_ADMIN_TOKEN, or a token file), or allows writes on a loopback address (docs/service.md).",
        )
    if svc.admin_token is None:
        return
    given = _given(request)
    if _matches(given, svc.admin_token):
        return
    if _matches(given, svc.token):
        raise StarletteHTTPException(403, "This token may only read: writes need the admin token.")
    raise StarletteHTTPException(401, token_help(request), headers={"WWW-Authenticate": "Bearer"})


def token_help(request: Request) -> str:
    """What a 401 says: a browser (it asked for HTML) is told the address to open, a program the header."""
    if "text/html" in request.headers.get("accept", "") or request.headers.get("x-vecsearch-page"):
        return (
            "Missing or wrong token: open this server's page as /?token=TOKEN "
            "(the address `vecsearch serve` printed when it started)."
        )
    return (
        "Missing or wrong token: send `Authorization: Bearer TOKEN` "
        "(in a browser, open this server's page as /?token=TOKEN instead)."
    )
