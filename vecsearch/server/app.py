"""The app factory: one open index served by the routers in `routes/`, behind the guards, with the
page at `/` and the API docs served offline.

The backbone, FAISS index and SQLite store are loaded once, in `create_app`; every handler
goes through the index object (`VecIndex`), never the database directly. Sync handlers run
in uvicorn's thread pool: the index serialises model calls itself, and every search first
checks the store's generation (one SQLite read) and, if an indexer in another process
committed, reloads the vectors (`VecIndex.refresh`, which publishes a new FAISS index only
once it is complete). Every error a client can cause is a 4xx JSON body with an "error"
key; nothing a client sends becomes a 500.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Callable, Iterable

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ..api import VecIndex
from ..config import MAX_FILES, MAX_REQUEST_BYTES, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, VERSION
from ..errors import VecsearchError
from ..opening import open_index
from . import errors
from .forwarding import Forward, ForwardWrites, write_routes
from .guards import MULTIPART_SLACK, HostCheck, UploadLimit, allowed_hosts, allowed_roots, check_writes
from .observe import LOG_FORMATS, Metrics, Observe, RootPath
from .params import known_query
from .routes import ROUTERS, metrics
from .service import Service, watch_request
from .shapes import API

DEFAULT_THREADS = 16
DEFAULT_BATCH_DELAY_MS = 5.0
"""How long the first waiting upload waits for others to share its model call (a lone one on a quiet server waits not at all)."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a request may wait for the model; past that it is dropped before its model call (503)."""
DOCS_STATIC = "/static/docs"
# The page talks to this server only; file names and labels it shows are text, never markup.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Resolved at import, so a missing package is an ImportError that `serve` turns into the install line.
DOCS_FILES = resources.files("fastapi_offline").joinpath("static")
# The docs pages may load nothing from elsewhere: ReDoc's sidebar links a logo on its CDN.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
DESCRIPTION = (
    "Search by an uploaded image or by an indexed image's id; read an image's metadata, ImageNet labels, "
    "user label and predictions; fetch thumbnails of indexed images (by id only); classify an upload with "
    "a saved classifier. Errors are JSON objects with an `error` key. When the server has a token, send it "
    "as `Authorization: Bearer TOKEN` (or `?token=TOKEN`); in a browser, open the page as `/?token=TOKEN`."
)


def create_app(
    index: str | os.PathLike | VecIndex | None = None,
    *,
    token: str | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
    threads: int = DEFAULT_THREADS,
    warm: bool = True,
    host: str = "127.0.0.1",
    allow_hosts: Iterable[str] = (),
    admin_token: str | None = None,
    allow_writes: bool = False,
    allow_roots: Iterable[str | os.PathLike] = (),
    max_request_bytes: int | None = None,
    batch_size: int | None = None,
    batch_delay_ms: float = DEFAULT_BATCH_DELAY_MS,
    max_queue: int | None = None,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    root_path: str = "",
    cors_origins: Iterable[str] = (),
    log_format: str = "text",
    metrics_public: bool = False,
    forward_writes: Forward | None = None,
    gather_metrics: Callable[[bytes], bytes] | None = None,
) -> FastAPI:
    """A FastAPI app serving one index (a folder, or an already open VecIndex).

    Requests must name the server in their Host header: the address it binds to (`host`,
    loopback by default) or one of `allow_hosts` (see `allowed_hosts`). `max_pixels` caps
    every image the service decodes: uploads and thumbnails.

    The backbone is built (and, if `warm`, traced) here so requests never pay for it.
    `token`, when set, is required as `Authorization: Bearer TOKEN` (or `?token=`) on
    everything but `/`, `/api/v1/health` and the OpenAPI docs; `admin_token` reads too and
    is the only one that writes. Writes (adding, removing, labelling, training) are off
    unless there is an admin token or `allow_writes` (refused off loopback without a token);
    `allow_roots` are the server-side folders a write may index by path. `max_request_bytes` caps a
    whole request body (several files; default MAX_REQUEST_BYTES, or MAX_FILES files at the cap if less). A folder is opened here and
    closed on shutdown; a VecIndex passed in stays the caller's to close. What the app
    changes process-wide (anyio's thread limit) it restores on shutdown; single queries
    run FAISS on one OpenMP thread, set and restored per call (`FaissIndex.search`).

    Operating (docs/service.md): every request gets an X-Request-ID and one line on the
    "vecsearch.access" logger (`log_format` "text" or "json"); `/metrics` (the read token
    unless `metrics_public`) and `/api/v1/ready` (200 once start-up is over). `root_path` is
    the path prefix a reverse proxy serves this under: links in JSON carry it. `cors_origins`
    are the web origins allowed to call the API from a browser (none by default).

    Replicas (`ray_serve`): with `forward_writes`, every write request is handed whole to that
    function (the one writer's app answers it) instead of this app's write routes; `gather_metrics`
    turns this app's /metrics scrape into one of every replica.

    While it serves, a micro-batcher (`IndexModel.start_batcher`) runs every upload's model
    call: up to `batch_size` images (None: `config.serve_batch_size`, 8 on a CPU; 0: no batcher, one call
    per request) gathered for `batch_delay_ms`, at most `max_queue` requests waiting (None: 4
    batches' worth; more get 503 + Retry-After). A request waiting past `request_timeout`
    seconds, or whose client disconnected, is dropped before its model call.
    """
    if log_format not in LOG_FORMATS:
        raise VecsearchError(f"The log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}.")
    root_path = clean_root_path(root_path)
    owns = not isinstance(index, VecIndex)
    ix = index if isinstance(index, VecIndex) else open_index(index, create=False)
    try:
        ix.store.require_info()
        svc = Service(
            ix,
            token=token,
            max_upload_bytes=max_upload_bytes,
            max_pixels=max_pixels,
            owns_index=owns,
            admin_token=admin_token,
            writes=check_writes(host, admin_token, allow_writes),
            allow_roots=allowed_roots(allow_roots),
            request_timeout=request_timeout,
            metrics_public=metrics_public,
        )
        _ = ix.backbone  # load now: a wrong or missing model fails at start-up, not per request
        if warm:
            ix.warm_up(batched=batch_size != 0)
    except BaseException:
        if owns:
            ix.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        # Two cores: more threads only queue on the model lock and the SQLite pool.
        limiter = anyio.to_thread.current_default_thread_limiter()
        batcher = None
        if batch_size != 0 and ix.model.batcher is None:  # one batcher per model (an index served twice shares it)
            batcher = ix.model.start_batcher(max_batch=batch_size, max_delay=batch_delay_ms / 1000, max_queue=max_queue)
        # Requests waiting on the batcher hold a thread each but no CPU: enough threads that a
        # full queue is what refuses the next one (503), not a wait for a thread.
        waiting = batcher.max_queue + batcher.max_batch if batcher is not None else 0
        before, limiter.total_tokens = limiter.total_tokens, threads + waiting
        try:
            if svc.metrics is not None:
                svc.metrics.attach()  # a batcher started with the app gets the batch-size hook
            svc.ready = True  # the model was built (and warmed) and the index loaded above: take traffic
            yield
        finally:
            svc.ready = False
            limiter.total_tokens = before
            if batcher is not None:
                ix.model.stop_batcher()
            if svc.owns_index:
                ix.close()

    app = FastAPI(
        docs_url=None,
        redoc_url=None,  # served below from the package's files: /docs works offline
        title="vecsearch",
        version=VERSION,
        lifespan=lifespan,
        # An undeclared query parameter is a 422 on every route; each request's deadline and disconnect check.
        dependencies=[Depends(known_query), Depends(watch_request)],
        description=DESCRIPTION,
        summary="Similarity search over an image index built with `vecsearch index`.",
    )
    app.state.service = svc
    errors.install_handlers(app)
    if forward_writes is not None:  # innermost: sees only requests that passed the checks added below
        app.add_middleware(ForwardWrites, routes=lambda: write_routes(app.routes), forward=forward_writes)
    body_cap = max_request_bytes if max_request_bytes is not None else min(MAX_REQUEST_BYTES, MAX_FILES * svc.max_upload_bytes)
    app.add_middleware(UploadLimit, limit=max(body_cap, svc.max_upload_bytes) + MULTIPART_SLACK, per_file=svc.max_upload_bytes)
    origins = [o.strip().rstrip("/") for o in cors_origins if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    hosts, any_ip = allowed_hosts(host, allow_hosts)
    app.add_middleware(HostCheck, hosts=hosts, any_ip=any_ip)
    svc.metrics = Metrics(ix)
    svc.gather_metrics = gather_metrics
    app.add_middleware(Observe, log_format=log_format, metrics=svc.metrics)  # sees every request
    if root_path:
        app.add_middleware(RootPath, root_path=root_path)  # added last: runs first
    app.add_api_route("/", page, include_in_schema=False, methods=["GET"])
    _install_docs(app)
    for router in ROUTERS:
        app.include_router(router, prefix=API)
        app.include_router(router, prefix="/api", deprecated=True)  # the paths before /api/v1, kept as aliases
    app.include_router(metrics.router)  # at the root, where scrapers look
    return app


def clean_root_path(root_path: str) -> str:
    """A path prefix as Starlette wants it: "" or "/prefix", no trailing slash."""
    root_path = (root_path or "").strip()
    if root_path in ("", "/"):
        return ""
    if not root_path.startswith("/") or any(c in root_path for c in "?#\\ ") or not root_path.isprintable():
        raise VecsearchError(f"The root path must be a URL path such as /vecsearch, not {root_path!r}.")
    return root_path.rstrip("/")


def page() -> HTMLResponse:
    """The web page. The shell needs no token: the page reads it from `/?token=` and sends it on API calls."""
    html = resources.files("vecsearch.server").joinpath("page.html").read_text(encoding="utf-8")
    return HTMLResponse(
        html, headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer", "Content-Security-Policy": PAGE_CSP}
    )


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from files shipped in a package, so they work offline.

    `swagger-ui-bundle` on PyPI carries Swagger UI 4, which cannot read the OpenAPI 3.1 that
    FastAPI writes; `fastapi-offline` carries Swagger UI 5 and ReDoc. Only its files are used.
    """
    app.mount(DOCS_STATIC, StaticFiles(directory=str(DOCS_FILES)), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title="vecsearch - API",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )  # the validator badge calls out
        html.headers["Content-Security-Policy"] = DOCS_CSP
        return html

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_redoc_html(
            openapi_url=root + openapi_url,
            title="vecsearch - API",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            with_google_fonts=False,
        )
        html.headers["Content-Security-Policy"] = DOCS_CSP
        return html
