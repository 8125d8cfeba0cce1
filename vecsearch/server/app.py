"""FastAPI app over one open index: search by upload or by id (with filters), metadata, thumbnails and
originals (by id only), classify, explain; the page at `/` and the API docs, served offline.

The backbone, FAISS index and SQLite store are loaded once, in `create_app`; every handler
goes through the index object (`VecIndex`), never the database directly. Sync handlers run
in uvicorn's thread pool: the index serialises model calls itself, and every search first
checks the store's generation (one SQLite read) and, if an indexer in another process
committed, reloads the vectors (`VecIndex.refresh`, which publishes a new FAISS index only
once it is complete). Every error a client can cause is a 4xx JSON body with an "error"
key; nothing a client sends becomes a 500.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import threading
from collections import OrderedDict
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Iterable
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, File, Query, Request, Security, UploadFile
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import images
from ..api import Hit, VecIndex, open_index
from ..config import DEFAULT_K, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS
from ..errors import (
    BadImageError,
    ClassifierNotFoundError,
    IndexCorruptError,
    IndexMismatchError,
    IndexNotFoundError,
    NotIndexedError,
    UploadTooLargeError,
    VecsearchError,
    WeightsUnavailableError,
)

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_OFFSET = 10_000
MAX_PAGE = 500
THUMB_SIZES = (16, 1024)
THUMB_CACHE_BYTES = 32 * 1024 * 1024
"""Thumbnails kept in memory, by their total size in bytes (least recently used dropped first)."""
DEFAULT_THREADS = 16
_MULTIPART_SLACK = 64 * 1024  # room for the multipart envelope around the file itself
_ID_MAX = 2**63 - 1  # SQLite integers; larger ids would overflow, not just miss

ImageId = Annotated[int, PathParam(ge=1, le=_ID_MAX, description="Image id, as returned by search results.")]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"How many neighbours (1..{MAX_K}).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many best results first (pagination).")]
Upload = Annotated[UploadFile, File(description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF).")]
EXPLAIN_SIDE = 384
Like = Annotated[int | None, Query(ge=1, le=_ID_MAX, description="Explain why the image is similar to this indexed image.")]
ImagenetClass = Annotated[str | None, Query(alias="class", max_length=100, description="An ImageNet class name or WordNet id (the default target: the top-1 class).")]
ClassifierName = Annotated[str | None, Query(max_length=64, description="A saved probe or fine-tuned head instead.")]
Label = Annotated[str | None, Query(max_length=200, description="With `classifier`: the class to explain (default: its prediction).")]
Side = Annotated[int, Query(ge=16, le=1024, description="Longest side of the PNG in pixels.")]
_TEXT = r"^[^\x00-\x1f\x7f]*$"  # no control characters: they are never in a label, and NUL breaks paths
Under = Annotated[str | None, Query(min_length=1, max_length=4096, pattern=_TEXT,
                                    description="Only images in this folder, at any depth (an absolute path, as in results' `folder`).")]
UserLabelFilter = Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT,
                                              description="Only images taught this user label (`vecsearch teach`).")]
Predicted = Annotated[str | None, Query(min_length=1, max_length=200, pattern=_TEXT,
                                        description="Only images a saved classifier predicted as this label.")]
PredictedBy = Annotated[str | None, Query(alias="classifier", min_length=1, max_length=64, pattern=_TEXT,
                                          description="With `predicted`: whose predictions (default: the newest saved classifier).")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, allow_inf_nan=False,
                                         description="Only results at least this similar (cosine, -1..1).")]
DOCS_STATIC = "/static/docs"
# The page talks to this server only; file names and labels it shows are text, never markup.
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# Resolved at import, so a missing package is an ImportError that `serve` turns into the install line.
DOCS_FILES = resources.files("fastapi_offline").joinpath("static")
# The docs pages may load nothing from elsewhere: ReDoc's sidebar links a logo on its CDN.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")
_PNG = {200: {"content": {"image/png": {}}, "description": "The heatmap over the image (PNG, the image's aspect ratio)."}}


class _Service:
    """What the handlers share: the index, locks, caches and limits."""

    def __init__(self, index: VecIndex, *, token: str | None, max_upload_bytes: int, max_pixels: int, owns_index: bool):
        self.index = index
        self.token = token or None
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.owns_index = owns_index
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()
        self._thumbs_bytes = 0
        self._thumbs_lock = threading.Lock()
        self._making: dict[tuple, threading.Event] = {}  # thumbnails being made: one decode per key

    def embed_upload(self, data: bytes):
        """Unit vector of uploaded bytes, under the upload pixel cap."""
        return self.index.embed_bytes(data, max_pixels=self.max_pixels)

    # -- thumbnails ---------------------------------------------------------------------
    def thumbnail(self, image_id: int, size: int, if_none_match: str | None = None) -> tuple[bytes | None, str]:
        """(JPEG bytes, ETag) of an indexed file, found by id only; cached while the file is unchanged.

        The bytes are None when `if_none_match` is the ETag: a revalidation decodes nothing.
        """
        rec = self.index.image(image_id)
        try:
            st = os.stat(rec.path)
        except OSError:
            raise NotIndexedError(f"The file of image {image_id} is no longer at {rec.path}.") from None
        key = (image_id, rec.path, st.st_size, st.st_mtime_ns, size)
        etag = f'"{rec.sha256 or image_id}-{st.st_size}-{st.st_mtime_ns}-{size}"'
        if if_none_match == etag:
            return None, etag
        with self._thumbs_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key], etag
            making = self._making.get(key)
            if making is None:
                self._making[key] = threading.Event()
        if making is not None:
            making.wait()  # another request is decoding this one: take its result
            with self._thumbs_lock:
                if key in self._thumbs:
                    return self._thumbs[key], etag
            return self._make_thumbnail(key, rec.path, size), etag  # it failed: fail the same way
        try:
            return self._make_thumbnail(key, rec.path, size), etag
        finally:
            with self._thumbs_lock:
                self._making.pop(key).set()

    def _make_thumbnail(self, key: tuple, path: str, size: int) -> bytes:
        # The service's pixel cap, not indexing's: anyone who can reach it may ask. A big JPEG
        # passes, decoded at reduced scale; the shared decode budget bounds what runs at once.
        data = images.thumbnail_jpeg(Path(path), size, max_pixels=self.max_pixels)
        with self._thumbs_lock:
            if key not in self._thumbs:
                self._thumbs[key] = data
                self._thumbs_bytes += len(data)
            while self._thumbs_bytes > THUMB_CACHE_BYTES and len(self._thumbs) > 1:
                _, old = self._thumbs.popitem(last=False)
                self._thumbs_bytes -= len(old)
        return data


# -- errors -------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error response: `error` says what is wrong."""

    error: str
    type: str | None = None
    detail: list | None = None


_ERROR_TEXT = {
    400: "Bad request: a Host header this server does not answer to, or a malformed header.",
    401: "Missing or wrong token (only when the server has one).",
    404: "No such image or classifier, or the image's file is gone.",
    413: "Upload over the size cap.",
    422: "Invalid parameters, or an image that cannot be read (not an image, truncated, over the pixel cap).",
    503: "The server's own index or model is unusable.",
}


def _responses(*codes: int, **more) -> dict:
    """OpenAPI entries for the error statuses a route can return, so clients (and fuzzers) know them all."""
    out: dict = {code: {"model": ErrorBody, "description": _ERROR_TEXT[code]} for code in (400, 503, *codes)}
    out.update({int(k.lstrip("_")): v for k, v in more.items()})
    return out


def _status(e: VecsearchError) -> int:
    if isinstance(e, UploadTooLargeError):
        return 413
    if isinstance(e, (NotIndexedError, ClassifierNotFoundError)):
        return 404
    if isinstance(e, BadImageError):
        return 422
    if isinstance(e, (IndexNotFoundError, IndexCorruptError, IndexMismatchError, WeightsUnavailableError)):
        # The server's own index or model is unusable: not the client's fault.
        return 503
    return 400


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VecsearchError)
    async def vecsearch_error(request: Request, e: VecsearchError):
        if isinstance(e, BadImageError):
            # The path of an upload is meaningless to the client; say only what is wrong.
            return _error(422, f"Bad image: {e.reason}", type="BadImageError")
        return _error(_status(e), str(e), type=type(e).__name__)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        # Never echo the input back (it may be an upload), so it is dropped before encoding.
        details = jsonable_encoder([{k: v for k, v in d.items() if k != "input"} for d in e.errors()],
                                   custom_encoder={Exception: str})
        parts = []
        for d in details:
            where = ".".join(str(x) for x in d.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{where}: {d.get('msg', 'invalid')}" if where else d.get("msg", "invalid"))
        return _error(422, "; ".join(parts) or "Invalid request.", detail=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        log.exception("unexpected error serving %s %s", request.method, request.url.path)
        return _error(500, "Internal error; see the server log.")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class _HostCheck:
    """ASGI middleware: answer only requests whose Host header names this server.

    A page on another site can make a browser send requests to a loopback server by
    pointing its own domain at 127.0.0.1 (DNS rebinding); the browser then sends that
    domain as Host. Only the allowed names pass (IP addresses too when the server binds
    to all addresses: a rebinding page cannot be reached under a bare IP).
    """

    def __init__(self, app, hosts: frozenset[str], any_ip: bool):
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

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            header = dict(scope.get("headers") or ()).get(b"host", b"").decode("latin-1")
            if not self.allowed(header):
                await _error(400, f"Host {header!r} is not served here: use the address the server listens on "
                                  "(start it with --allow-host NAME to allow another name).", type="BadHost")(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


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


class _UploadLimit:
    """ASGI middleware: refuse request bodies over the cap before the multipart parser spools them.

    A declared Content-Length over the cap is refused unread; a chunked body is buffered
    up to the cap and refused as soon as it passes it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await _send_error(scope, receive, send, 400, "Bad Content-Length header.")
                return
            if n > self.limit:
                await _send_error(scope, receive, send, 413, _too_large(self.limit))
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
                await _send_error(scope, receive, send, 413, _too_large(self.limit))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> str:
    return f"Upload too large: the cap is {limit - _MULTIPART_SLACK} bytes."


async def _send_error(scope, receive, send, status: int, message: str) -> None:
    # The body was not read, so the connection cannot be reused.
    await _error(status, message, type="UploadTooLargeError" if status == 413 else "BadRequest").__call__(
        scope, receive, _with_close(send))


def _with_close(send):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = dict(message, headers=list(message.get("headers", [])) + [(b"connection", b"close")])
        await send(message)

    return wrapped


def _read_upload(svc: _Service, file: UploadFile) -> bytes:
    data = file.file.read(svc.max_upload_bytes + 1)
    if len(data) > svc.max_upload_bytes:
        raise UploadTooLargeError(f"Upload too large: the cap is {svc.max_upload_bytes} bytes.")
    if not data:
        raise BadImageError("empty upload")
    return data


# -- the app ------------------------------------------------------------------------------
def create_app(index: str | os.PathLike | VecIndex | None = None, *, token: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS,
               threads: int = DEFAULT_THREADS, warm: bool = True, host: str = "127.0.0.1",
               allow_hosts: Iterable[str] = ()) -> FastAPI:
    """A FastAPI app serving one index (a folder, or an already open VecIndex).

    Requests must name the server in their Host header: the address it binds to (`host`,
    loopback by default) or one of `allow_hosts` (see `allowed_hosts`). `max_pixels` caps
    every image the service decodes: uploads and thumbnails.

    The backbone is built (and, if `warm`, traced) here so requests never pay for it.
    `token`, when set, is required as `Authorization: Bearer TOKEN` (or `?token=`) on
    everything but `/`, `/api/health` and the OpenAPI docs. A folder is opened here and
    closed on shutdown; a VecIndex passed in stays the caller's to close. What the app
    changes process-wide (anyio's thread limit) it restores on shutdown; single queries
    run FAISS on one OpenMP thread, set and restored per call (`FaissIndex.search`).
    """
    owns = not isinstance(index, VecIndex)
    ix = open_index(index, create=False) if owns else index
    try:
        ix.store.require_info()
        svc = _Service(ix, token=token, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, owns_index=owns)
        _ = ix.backbone  # load now: a wrong or missing model fails at start-up, not per request
        if warm:
            ix.warm_up()

    except BaseException:
        if owns:
            ix.close()
        raise

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import anyio.to_thread

        # Two cores: more threads only queue on the model lock and the SQLite pool.
        limiter = anyio.to_thread.current_default_thread_limiter()
        before, limiter.total_tokens = limiter.total_tokens, threads
        try:
            yield
        finally:
            limiter.total_tokens = before
            if svc.owns_index:
                ix.close()

    app = FastAPI(
        docs_url=None, redoc_url=None,  # served below from the package's files: /docs works offline
        title="vecsearch",
        version=_version(),
        summary="Similarity search over an image index built with `vecsearch index`.",
        description=(
            "Search by an uploaded image or by an indexed image's id; read an image's metadata, ImageNet labels, "
            "user label and predictions; fetch thumbnails of indexed images (by id only); classify an upload with "
            "a saved classifier. Errors are JSON objects with an `error` key. When the server has a token, send it "
            "as `Authorization: Bearer TOKEN` (or `?token=TOKEN`); in a browser, open the page as `/?token=TOKEN`."
        ),
        lifespan=lifespan,
    )
    app.state.service = svc
    _install_error_handlers(app)
    app.add_middleware(_UploadLimit, limit=svc.max_upload_bytes + _MULTIPART_SLACK)
    hosts, any_ip = allowed_hosts(host, allow_hosts)
    app.add_middleware(_HostCheck, hosts=hosts, any_ip=any_ip)  # added last: runs first

    # Declared so /docs has an "Authorize" button for the token; the check itself is below.
    bearer = HTTPBearer(auto_error=False, description="The server's --token (only when it has one).")

    async def authorised(request: Request, _=Security(bearer)) -> None:
        # async: no thread-pool hop per request
        if svc.token is None:
            return
        header = request.headers.get("authorization", "")
        # Starlette decodes headers as Latin-1 and query strings as UTF-8: compare the bytes sent.
        if header[:7].lower() == "bearer ":
            given = header[7:].strip().encode("latin-1")
        else:
            given = request.query_params.get("token", "").encode()
        if not given or not hmac.compare_digest(given, svc.token.encode()):
            raise StarletteHTTPException(401, _token_help(request), headers={"WWW-Authenticate": "Bearer"})

    def current() -> VecIndex:
        """The index, reloaded first if another process committed to it."""
        ix.refresh()
        return ix

    Auth = [Depends(authorised)]

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        # The shell needs no token: the page reads it from `/?token=` and sends it on API calls.
        html = resources.files("vecsearch.server").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer",
                                           "Content-Security-Policy": PAGE_CSP})

    _install_docs(app)

    @app.get("/api/health", tags=["service"], summary="Liveness and what is loaded", responses=_responses())
    def health() -> dict:
        """Cheap check for monitors; needs no token."""
        return {"status": "ok", "backbone": ix.backbone.name, "vectors": len(current().searcher),
                "generation": ix.generation, "auth": svc.token is not None}

    @app.get("/api/stats", tags=["service"], summary="Counts, backbone, weights and sizes", dependencies=Auth,
             responses=_responses(401))
    def stats() -> dict:
        s = current().stats()
        s["generation"] = ix.generation
        s["classifiers"] = [r["name"] for r in ix.classifiers()]
        s["labels"] = sorted(ix.label_counts())  # the user's classes: what `label` and `predicted` filter on
        s["max_upload_bytes"] = svc.max_upload_bytes
        s["max_pixels"] = svc.max_pixels
        return s

    @app.post("/api/search", tags=["search"], summary="Images most similar to an uploaded image", dependencies=Auth,
              responses=_responses(401, 413, 422))
    def search_upload(file: Upload, k: K = DEFAULT_K, offset: Offset = 0, under: Under = None,
                      label: UserLabelFilter = None, predicted: Predicted = None, predicted_by: PredictedBy = None,
                      min_score: MinScore = None) -> dict:
        """Multipart upload in field `file`; results are best first, ranks counted from 1 over all pages.

        The filters (`under`, `label`, `predicted` with `classifier`, `min_score`) keep only the images
        that pass all of them; k are still returned whenever k images pass.
        """
        filters = _filters(under, label, predicted, predicted_by, min_score)
        q = svc.embed_upload(_read_upload(svc, file))
        hits = current().search_vector(q, k + offset, **filters)[offset:]
        return _results(ix, hits, k=k, offset=offset, next_url=_next("/api/search", k, offset, len(hits), filters))

    @app.get("/api/images/{image_id}/similar", tags=["search"], summary="Images most similar to an indexed image",
             dependencies=Auth, responses=_responses(401, 404, 422))
    def similar(image_id: ImageId, k: K = DEFAULT_K, offset: Offset = 0, under: Under = None,
                label: UserLabelFilter = None, predicted: Predicted = None, predicted_by: PredictedBy = None,
                min_score: MinScore = None) -> dict:
        """Neighbours of an indexed image by its stored vector (no model call); itself left out. Filters as for search."""
        filters = _filters(under, label, predicted, predicted_by, min_score)
        hits = current().similar(image_id, k + offset, **filters)[offset:]
        return _results(ix, hits, k=k, offset=offset, query_id=image_id,
                        next_url=_next(f"/api/images/{image_id}/similar", k, offset, len(hits), filters))

    @app.get("/api/images", tags=["images"], summary="Indexed images, a page at a time", dependencies=Auth,
             responses=_responses(401, 422))
    def list_images(offset: Annotated[int, Query(ge=0, le=_ID_MAX)] = 0,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size (1..{MAX_PAGE}).")] = 100,
                    status: Annotated[str | None, Query(pattern="^(ok|failed)$", description="Only `ok` or `failed` images.")] = None) -> dict:
        total, rows = current().images(offset, limit, status)
        notes = ix.annotations([r.id for r in rows], top=5)
        nxt = offset + len(rows)
        more = f"/api/images?offset={nxt}&limit={limit}" + (f"&status={status}" if status else "")
        return {"total": total, "offset": offset, "limit": limit,
                "items": [_image_dict(r) | notes[r.id] for r in rows], "next": more if nxt < total else None}

    @app.get("/api/images/{image_id}", tags=["images"], summary="An image's metadata, labels and predictions",
             dependencies=Auth, responses=_responses(401, 404, 422))
    def image(image_id: ImageId) -> dict:
        rec = current().image(image_id)
        return _image_dict(rec) | ix.annotations([image_id], top=5)[image_id]

    @app.get("/api/images/{image_id}/thumbnail", tags=["images"], summary="A JPEG thumbnail of an indexed image",
             dependencies=Auth, response_class=Response,
             responses=_responses(401, 404, 422, _200={"content": {"image/jpeg": {}}, "description": "JPEG, longest side `size` pixels at most."},
                                  _304={"description": "Not modified: the client's copy (If-None-Match) is current."}))
    def thumbnail(request: Request, image_id: ImageId,
                  size: Annotated[int, Query(ge=THUMB_SIZES[0], le=THUMB_SIZES[1], description="Longest side in pixels.")] = 256) -> Response:
        """Served by id from the path the index recorded; a client never names a file."""
        data, etag = svc.thumbnail(image_id, size, request.headers.get("if-none-match"))
        headers = {"ETag": etag, "Cache-Control": "private, max-age=300"}
        if data is None:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/images/{image_id}/original", tags=["images"], summary="The original file of an indexed image",
             dependencies=Auth, response_class=Response,
             responses=_responses(401, 404, 422, _200={"content": {"image/*": {}}, "description": "The file's bytes as indexed, with its image type."},
                                  _304={"description": "Not modified: the client's copy (If-None-Match) is current."}))
    def original(request: Request, image_id: ImageId) -> Response:
        """Served by id only, from the path the index recorded, and only while the file is the one indexed
        (same size and modification time; otherwise 404: index its folder again)."""
        f = current().original(image_id)
        etag = f'"o-{image_id}-{f.size}-{f.mtime_ns}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
                   "Content-Disposition": "inline; filename*=UTF-8''" + quote(os.path.basename(f.path), safe="")}
        if request.headers.get("if-none-match") == etag:
            f.close()
            return Response(status_code=304, headers=headers)
        return StreamingResponse(f, media_type=f.media_type, headers=headers | {"Content-Length": str(f.size)})

    @app.get("/api/classifiers", tags=["classify"], summary="Saved classifiers", dependencies=Auth,
             responses=_responses(401))
    def classifiers() -> dict:
        return {"items": [{k: v for k, v in row.items() if k != "path"} for row in current().classifiers()]}

    @app.post("/api/classify", tags=["classify"], summary="Classify an uploaded image with a saved classifier",
              dependencies=Auth, responses=_responses(401, 404, 413, 422))
    def classify(file: Upload,
                 classifier: Annotated[str | None, Query(max_length=64, description="Classifier name (default: the newest).")] = None,
                 top: Annotated[int, Query(ge=1, le=100, description="How many classes to list.")] = 5) -> dict:
        """The same result shape as `vecsearch classify IMG --json` and `VecIndex.classify` (`path` is null)."""
        model = ix.classifier(classifier)  # an unknown name is a 404 before the upload is decoded
        q = svc.embed_upload(_read_upload(svc, file))
        return ix.classify(q, model=model, top=top).to_dict()

    @app.get("/api/images/{image_id}/explain", tags=["explain"], dependencies=Auth, response_class=Response,
             summary="Heatmap of what the model looks at in an indexed image",
             responses=_responses(401, 404, 422, _200=_PNG[200]))
    def explain_image(image_id: ImageId, like: Like = None, imagenet_class: ImagenetClass = None,
                      classifier: ClassifierName = None, label: Label = None, side: Side = EXPLAIN_SIDE) -> Response:
        """Where the evidence lies for the similarity to image `like`, an ImageNet `class`, or a classifier's class."""
        result = current().explain(image_id, like=like, imagenet_class=imagenet_class, classifier=classifier,
                                   label=label, side=side)
        return _png(result)

    @app.post("/api/explain", tags=["explain"], dependencies=Auth, response_class=Response,
              summary="Heatmap of what the model looks at in an uploaded image",
              responses=_responses(401, 404, 413, 422, _200=_PNG[200]))
    def explain_upload(file: Upload, like: Like = None, imagenet_class: ImagenetClass = None,
                       classifier: ClassifierName = None, label: Label = None, side: Side = EXPLAIN_SIDE) -> Response:
        """As `GET /api/images/{id}/explain`, for the image in multipart field `file`."""
        result = current().explain(_read_upload(svc, file), like=like, imagenet_class=imagenet_class,
                                   classifier=classifier, label=label, side=side, max_pixels=svc.max_pixels)
        return _png(result)

    @app.post("/api/images/{image_id}/explain", tags=["explain"], dependencies=Auth, response_class=Response,
              summary="Why an indexed image is similar to an uploaded one",
              responses=_responses(401, 404, 413, 422, _200=_PNG[200]))
    def explain_like_upload(image_id: ImageId, file: Upload, side: Side = EXPLAIN_SIDE) -> Response:
        """The heatmap over indexed image `image_id` of its similarity to the image in multipart field `file`."""
        ix.image(image_id)  # an unknown id is a 404 before the upload is decoded
        other = svc.embed_upload(_read_upload(svc, file))
        return _png(current().explain(image_id, like=other, side=side))

    return app


def _png(result) -> Response:
    headers = {"Cache-Control": "private, max-age=300", "X-Explain-Score": f"{result.score:.6f}",
               "X-Explain-Method": result.method}
    return Response(result.to_png(), media_type="image/png", headers=headers)


def _version() -> str:
    from ..config import VERSION

    return VERSION


def _next(base: str, k: int, offset: int, got: int, filters: dict | None = None) -> str | None:
    # A full page may have more behind it; a short one is the last.
    if got < k or offset + k > MAX_OFFSET:
        return None
    return f"{base}?" + urlencode({"k": k, "offset": offset + k, **(filters or {})})


def _filters(under: str | None, label: str | None, predicted: str | None, classifier: str | None,
             min_score: float | None) -> dict:
    """The search filters that were given, as `VecIndex.search_vector` keywords (and query parameters)."""
    given = {"under": under, "label": label, "predicted": predicted, "classifier": classifier, "min_score": min_score}
    return {k: v for k, v in given.items() if v is not None}


def _token_help(request: Request) -> str:
    """What a 401 says: a browser (it asked for HTML) is told the address to open, a program the header."""
    if "text/html" in request.headers.get("accept", "") or request.headers.get("x-vecsearch-page"):
        return ("Missing or wrong token: open this server's page as /?token=TOKEN "
                "(the address `vecsearch serve` printed when it started).")
    return ("Missing or wrong token: send `Authorization: Bearer TOKEN` "
            "(in a browser, open this server's page as /?token=TOKEN instead).")


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from files shipped in a package, so they work offline.

    `swagger-ui-bundle` on PyPI carries Swagger UI 4, which cannot read the OpenAPI 3.1 that
    FastAPI writes; `fastapi-offline` carries Swagger UI 5 and ReDoc. Only its files are used.
    """
    app.mount(DOCS_STATIC, StaticFiles(directory=str(DOCS_FILES)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_swagger_ui_html(openapi_url=root + app.openapi_url, title="vecsearch - API",
                                   swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # the validator badge calls out
        html.headers["Content-Security-Policy"] = DOCS_CSP
        return html

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_redoc_html(openapi_url=root + app.openapi_url, title="vecsearch - API",
                              redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png", with_google_fonts=False)
        html.headers["Content-Security-Policy"] = DOCS_CSP
        return html


def _results(ix: VecIndex, hits: list[Hit], *, k: int, offset: int, next_url: str | None, query_id: int | None = None) -> dict:
    notes = ix.annotations([h.id for h in hits], top=3)
    items = []
    for n, h in enumerate(hits[:k]):
        items.append({"rank": offset + n + 1, "id": h.id, "path": h.path, "name": os.path.basename(h.path),
                      "folder": os.path.dirname(h.path), "score": h.score, "thumbnail": f"/api/images/{h.id}/thumbnail",
                      "original": f"/api/images/{h.id}/original", **notes[h.id]})
    out = {"k": k, "offset": offset, "results": items, "next": next_url}
    if query_id is not None:
        out = {"query_id": query_id} | out
    return out


def _image_dict(rec) -> dict:
    return {"id": rec.id, "path": rec.path, "name": os.path.basename(rec.path), "folder": os.path.dirname(rec.path),
            "size": rec.size,
            "mtime_ns": rec.mtime_ns, "sha256": rec.sha256, "width": rec.width, "height": rec.height,
            "status": rec.status, "reason": rec.reason,
            "indexed_at": rec.indexed_at.isoformat(timespec="seconds") + "Z",
            "thumbnail": f"/api/images/{rec.id}/thumbnail" if rec.status == "ok" else None,
            "similar": f"/api/images/{rec.id}/similar" if rec.status == "ok" else None,
            "original": f"/api/images/{rec.id}/original" if rec.status == "ok" else None}

