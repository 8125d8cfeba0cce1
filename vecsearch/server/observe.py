"""Operating the service: a request id on every request, one access-log line per request, and
Prometheus metrics on the app's own registry.

`Observe` is a pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which would buffer
streamed responses and run the app in another task): it only watches the response start go
by. The request id lives in a context variable, so `errors.error_response` puts it in every
error body, the middlewares' refusals included, without being handed it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping, MutableMapping

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..api import VecIndex

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("vecsearch.access")


def log_access_to_stderr(log_format: str) -> None:
    """One line per request on stderr, whatever the log level of uvicorn's own messages. For the processes
    that serve (the `serve` command, a Ray replica) to call: the library itself configures no logging."""
    import sys

    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s" if log_format == "json" else "%(asctime)s %(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID = 128
UNMATCHED = "<unmatched>"
"""The route label of requests no route matched: raw paths would make the metrics' labels unbounded."""
LOG_FORMATS = ("text", "json")
request_id: ContextVar[str | None] = ContextVar("vecsearch_request_id", default=None)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def current_request_id() -> str | None:
    """The id of the request being served (None outside one)."""
    return request_id.get()


def accepted_id(given: bytes | None) -> str:
    """The client's X-Request-ID when it is safe to log and echo (1..128 visible ASCII characters: no
    spaces, so a text log line splits cleanly), else a new one."""
    if given and len(given) <= MAX_REQUEST_ID and all(0x21 <= c <= 0x7E for c in given):
        return given.decode("ascii")
    return uuid.uuid4().hex


def escaped(text: str, limit: int = 300) -> str:
    """Text for one log line: control and other unprintable characters as escapes, long text cut."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def route_of(scope: Scope, path: str) -> str | None:
    """The template of the route that served a request (`/api/v1/images/{image_id}`), None when none matched.

    `path` is the request's path without the root path. The route in the scope knows only its own
    template (`/images/{image_id}`), not the prefix its router was included under (`/api/v1` or
    `/api`): that prefix is the request path's leading segments the template does not account for.
    """
    from starlette.routing import Mount

    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    if isinstance(route, Mount):
        return template + "/{path}"
    have, want = path.split("/"), template.split("/")
    if len(have) < len(want):
        return template
    return "/".join(have[: len(have) - len(want) + 1]) + template


class Observe:
    """ASGI middleware: the request id (the client's, sanitised, or a new one) set and echoed, the
    access-log line written and the request metrics counted once the request is done.

    The log line never holds the query string (it may carry `?token=`) nor headers."""

    def __init__(self, app: ASGIApp, *, log_format: str = "text", metrics: Metrics | None = None):
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {LOG_FORMATS}, not {log_format!r}")
        self.app = app
        self.log_format = log_format
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.routing import get_route_path

        path = get_route_path(scope)  # now: routing may change the scope's root_path
        rid = accepted_id(dict(scope.get("headers") or ()).get(b"x-request-id"))
        # Not reset afterwards: a 500 is answered by Starlette's outermost middleware, after this one
        # has returned, and still carries the id. Each request runs in its own task, so it does not leak.
        request_id.set(rid)
        status = 500  # what the client gets when the app fails before answering
        start = time.perf_counter()

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or ())
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode("ascii")))
                message = dict(message, headers=headers)
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            seconds = time.perf_counter() - start
            route = route_of(scope, path)
            method = str(scope.get("method", ""))
            if self.metrics is not None:
                self.metrics.observe(method, route or UNMATCHED, status, seconds)
            self.log(rid, method, route or path, status, seconds)

    def log(self, rid: str, method: str, route: str, status: int, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        ms = round(seconds * 1000, 1)
        if len(route) > 300:  # an unmatched path is the client's: bounded like everything it sends
            route = route[:300] + "..."
        if self.log_format == "json":
            line = json.dumps(
                {
                    "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "request_id": rid,
                    "method": method,
                    "route": route,
                    "status": status,
                    "ms": ms,
                },
                ensure_ascii=True,  # json.dumps escapes control characters itself
            )
        else:
            line = f"{escaped(method)} {escaped(route)} {status} {ms}ms id={rid}"
        access_log.info(line)


class RootPath:
    """ASGI middleware: the path prefix a reverse proxy serves the app under (`--root-path`), set in the
    scope as uvicorn's own --root-path would (unless the server set one). Requests may arrive with the
    prefix (the proxy passes the path on) or without it (the proxy strips it): Starlette routes both;
    links built from the scope's root path (`shapes.api`) and the docs carry it."""

    def __init__(self, app: ASGIApp, root_path: str):
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("root_path"):
            scope = dict(scope, root_path=self.root_path)
        await self.app(scope, receive, send)


class Metrics:
    """The app's Prometheus metrics on its own registry (several apps in one process do not clash).

    Request counts and latencies are recorded by `Observe`; the index's size and generation and
    the micro-batcher's queue are read when scraped (`IndexCollector`); model batch sizes come
    from the batcher's `on_batch` hook when the model has a batcher."""

    def __init__(self, ix: VecIndex):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.ix = ix
        self.registry: CollectorRegistry = CollectorRegistry(auto_describe=True)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "vecsearch_requests", "HTTP requests served, by route template, method and status.", labels, registry=self.registry
        )
        self.latency = Histogram(
            "vecsearch_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template, method and status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "vecsearch_model_batch_size",
            "Images per model call made by the micro-batcher.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(IndexCollector(self))
        self.attach()

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def batcher(self) -> Any:
        return getattr(getattr(self.ix, "model", None), "batcher", None)

    def on_batch(self, size: int) -> None:
        self.batch_sizes.observe(size)

    def attach(self) -> None:
        """Hook the batch-size histogram into the model's batcher, if it has one (again after a restart of it)."""
        b = self.batcher()
        hooks = getattr(b, "on_batch", None)
        if isinstance(hooks, list) and self.on_batch not in hooks:
            hooks.append(self.on_batch)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.attach()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class IndexCollector:
    """Gauges read at scrape time: vectors in the index, its generation, and the micro-batcher's
    queue and counters when one runs (nothing of it when the model has none)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []  # collected fresh at each scrape; the registry need not know the names up front

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ix = self.metrics.ix
        searcher = ix.searcher
        yield GaugeMetricFamily("vecsearch_index_vectors", "Vectors in the served index.", value=len(searcher) if searcher else 0)
        yield GaugeMetricFamily(
            "vecsearch_index_generation", "The index's generation (bumped by every commit).", value=ix.generation
        )
        b = self.metrics.batcher()
        if b is None:
            return
        s = b.stats()
        yield GaugeMetricFamily(
            "vecsearch_batcher_queue_depth", "Images waiting for a model call.", value=s.get("queue_depth", 0)
        )
        yield GaugeMetricFamily("vecsearch_batcher_max_queue", "The batcher's queue cap.", value=s.get("max_queue", 0))
        yield GaugeMetricFamily("vecsearch_batcher_max_batch", "The batcher's largest model call.", value=s.get("max_batch", 0))
        for name, key, text in (
            ("vecsearch_batcher_batches", "batches", "Model calls made by the batcher."),
            ("vecsearch_batcher_rows", "rows", "Images embedded by the batcher."),
            ("vecsearch_batcher_rejected", "rejected", "Requests refused because the queue was full (503)."),
            (
                "vecsearch_batcher_dropped",
                "dropped",
                "Requests dropped before their model call (deadline passed or client gone).",
            ),
        ):
            yield CounterMetricFamily(name, text, value=s.get(key, 0))


def serve_metrics(metrics: Metrics, gather: Callable[[bytes], bytes] | None = None) -> Any:
    """The /metrics response (Prometheus text exposition); `gather` makes it every replica's."""
    from fastapi.responses import Response

    body, media_type = metrics.exposition()
    if gather is not None:
        body = gather(body)
    return Response(body, media_type=media_type, headers={"Cache-Control": "no-store"})


def merge_scrapes(scrapes: Mapping[str, bytes], label: str = "replica") -> bytes:
    """Several processes' scrapes as one, each sample labelled with its source (`label`="its key"),
    one HELP and TYPE a metric: what a scraper reads from one address in front of replicas."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    for source, text in sorted(scrapes.items()):
        for family in text_string_to_metric_families(text.decode("utf-8")):
            into = families.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            for s in family.samples:
                into.add_sample(s.name, {**s.labels, label: source}, s.value, s.timestamp, s.exemplar)

    class Merged:
        def collect(self) -> Iterable[Metric]:
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    return generate_latest(registry)
