"""Writes handled elsewhere: a reader app hands every write request, whole, to the one app that
writes (`ForwardWrites`), which answers it as if it had come in itself (`answer`).

Why at the ASGI level and not per route: the writer runs the very same routes, validation, guards
and errors as the in-process server, so a forwarded write is answered exactly as a local one, and
a route added to `routes/writes.py` is forwarded without a line here. What crosses between the two
is plain data (`Forwarded`, `Answer`: picklable, for Ray Serve's handles); how it travels is the
caller's `forward` function.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypedDict

from starlette.routing import BaseRoute, Match

from .errors import error_response
from .guards import ASGIApp, Message, Receive, Scope, Send

WRITE_TAG = "write"
"""The OpenAPI tag of `routes/writes.py`'s router: the routes a reader forwards."""


class Forwarded(TypedDict):
    """One HTTP request as the reader received it (after its Host check and body cap)."""

    method: str
    path: str
    raw_path: bytes
    root_path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    body: bytes


class Answer(TypedDict):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


Forward = Callable[[Forwarded], Awaitable[Answer]]
"""Sends a request to the writer and returns its answer; raises `WriterUnavailable` when it cannot."""


class WriterUnavailable(Exception):
    """The writer cannot take the request now (busy, restarting): the client gets 503 + Retry-After."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


def write_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The app's write routes: tagged so themselves, or (FastAPI >= 0.16x) an included router tagged so."""

    def tags(route: object) -> list[str]:
        return list(getattr(route, "tags", None) or getattr(getattr(route, "original_router", None), "tags", None) or ())

    return [r for r in routes if WRITE_TAG in tags(r)]


class ForwardWrites:
    """ASGI middleware of a reader: a request that a write route matches (path and method) goes to
    `forward`; everything else, a wrong method on a write path included, is answered here."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[BaseRoute]], forward: Forward):
        self.app = app
        self.find_routes = routes  # called at the first request: the routers are included after the middleware
        self.routes: list[BaseRoute] | None = None
        self.forward = forward

    def is_write(self, scope: Scope) -> bool:
        if self.routes is None:
            self.routes = self.find_routes()
        return any(r.matches(scope)[0] is Match.FULL for r in self.routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or not self.is_write(scope):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:  # the body cap (UploadLimit, outside this) has already bounded it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request: Forwarded = {
            "method": scope["method"],
            "path": scope["path"],
            "raw_path": scope.get("raw_path") or scope["path"].encode(),
            "root_path": scope.get("root_path", ""),
            "query_string": scope.get("query_string", b""),
            "headers": [(bytes(k), bytes(v)) for k, v in scope.get("headers") or ()],
            "client": tuple(scope["client"]) if scope.get("client") else None,
            "body": b"".join(chunks),
        }
        try:
            answer = await self.forward(request)
        except WriterUnavailable as e:
            response = error_response(503, str(e), headers={"Retry-After": str(e.retry_after)})
            await response(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": answer["status"], "headers": answer["headers"]})
        await send({"type": "http.response.body", "body": answer["body"]})


async def answer(app: ASGIApp, request: Forwarded) -> Answer:
    """Run a forwarded request through `app` (started: its lifespan entered) and collect the response.

    The request counts as connected until the app has answered: a write whose caller gave up is still
    finished, as it would be in the in-process server once its model call has started.
    """
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "method": request["method"],
        "path": request["path"],
        "raw_path": request["raw_path"],
        "root_path": request["root_path"],
        "query_string": request["query_string"],
        "headers": request["headers"],
        "client": request["client"],
        "server": None,
    }
    sent = False
    done = asyncio.Event()
    status, headers, body = 500, [], []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": request["body"], "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = int(message["status"]), [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()]
        elif message["type"] == "http.response.body":
            body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return {"status": status, "headers": headers, "body": b"".join(body)}
