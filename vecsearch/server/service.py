"""What every handler shares: the open index, the limits, the token and the thumbnail cache, as one
`Service` on `app.state`, handed to routes by the `service` dependency (no closures over the index)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
from fastapi import Depends, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError

from ..api import VecIndex
from ..config import MAX_FILES
from ..errors import BadImageError, UploadTooLargeError
from ..model import ModelCall
from ..uploads import display_name
from .observe import Metrics
from .thumbnails import ThumbnailCache


class Service:
    """One served index and the limits it is served under."""

    def __init__(
        self,
        index: VecIndex,
        *,
        token: str | None,
        max_upload_bytes: int,
        max_pixels: int,
        owns_index: bool,
        admin_token: str | None = None,
        writes: bool = False,
        allow_roots: tuple[Path, ...] = (),
        request_timeout: float | None = None,
        metrics_public: bool = False,
    ):
        self.index = index
        self.token = token or None  # reads (the admin token reads too)
        self.admin_token = admin_token or None  # writes
        # Writes are off unless the operator turned them on: an admin token, or an explicit flag on loopback.
        self.writes = bool(writes or self.admin_token)
        self.allow_roots = allow_roots  # server-side folders a write may index by path, resolved
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self.owns_index = owns_index
        self.thumbnails = ThumbnailCache(index, max_pixels=self.max_pixels)
        # Seconds a request may wait for the model before it is dropped (None: no limit).
        self.request_timeout = request_timeout
        self.metrics_public = metrics_public  # GET /metrics without the token
        self.metrics: Metrics | None = None  # set by create_app
        self.gather_metrics: Callable[[bytes], bytes] | None = None  # replicas: this scrape -> all of theirs
        self.ready = False  # set when start-up is over: the model built and warmed, the index loaded

    def current(self) -> VecIndex:
        """The index, reloaded first if another process committed to it (one SQLite read when not)."""
        self.index.refresh()
        return self.index

    def read_upload(self, file: UploadFile) -> bytes:
        """An upload's bytes, refused past the cap without reading more than cap + 1 bytes."""
        data = file.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise UploadTooLargeError(f"Upload too large: the cap is {self.max_upload_bytes} bytes.")
        if not data:
            raise BadImageError("empty upload")
        return data

    def read_uploads(self, files: list[UploadFile]) -> Uploaded:
        """Each uploaded file's name and bytes; one over the cap or empty is refused alone (its bytes
        empty, its reason in `refused`): one bad part never fails the others. Over MAX_FILES parts: 422."""
        if len(files) > MAX_FILES:
            raise RequestValidationError(
                [{"type": "too_long", "loc": ("body", "file"), "msg": f"at most {MAX_FILES} files a request, got {len(files)}"}]
            )
        out = Uploaded([], [], {})
        for i, f in enumerate(files):
            out.names.append(display_name(f.filename) or "upload")
            try:
                out.datas.append(self.read_upload(f))
            except (UploadTooLargeError, BadImageError) as e:
                out.datas.append(b"")
                out.refused[i] = e.reason if isinstance(e, BadImageError) else str(e)
        return out

    def embed_upload(self, file: UploadFile) -> np.ndarray:
        """Unit vector of an uploaded image, under the upload size and pixel caps; dropped
        before its model call when the request's deadline passes or its client goes away."""
        return self.index.embed_bytes(self.read_upload(file), max_pixels=self.max_pixels, **request_scope())


@dataclass
class Uploaded:
    """A request's uploads, in the order sent: `datas[i]` is empty for a part refused before decoding,
    `refused[i]` says why (what the decoder reports for the others goes beside it)."""

    names: list[str]
    datas: list[bytes]
    refused: dict[int, str]


def service(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(service)]


GONE_CHECK_SECONDS = 0.25
"""How long a disconnect check may wait for the event loop; a busy loop counts as the client still there."""


SCOPE: contextvars.ContextVar[ModelCall | None] = contextvars.ContextVar("vecsearch_request_scope", default=None)
"""The current request's deadline and disconnect check, set by `watch_request` (sync handlers' threads copy the context)."""


def request_scope() -> ModelCall:
    """`deadline=` and `cancelled=` for a model call made for the current request (none outside one)."""
    return SCOPE.get() or {}


async def watch_request(
    request: Request,
    x_request_timeout: Annotated[
        float | None,
        Header(
            gt=0,
            le=3600,
            allow_inf_nan=False,
            description="Seconds this client will wait: no model call is started for it (nor a batch grown) past that.",
        ),
    ] = None,
) -> None:
    """App-wide dependency: the request's deadline (`request_timeout` from now, or the client's own
    `X-Request-Timeout` when sooner) and a disconnect check.

    The check runs in the batcher's thread just before the model call, asking the event loop
    (`Request.is_disconnected`): a client that gave up is dropped before the model works for it.
    """
    svc: Service = request.app.state.service
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def gone() -> bool:
        if threading.get_ident() == loop_thread:  # never block the loop on itself
            return False
        try:
            return asyncio.run_coroutine_threadsafe(request.is_disconnected(), loop).result(GONE_CHECK_SECONDS)
        except Exception:
            return False

    timeout = svc.request_timeout
    if x_request_timeout is not None:
        timeout = min(x_request_timeout, timeout) if timeout else x_request_timeout
    SCOPE.set({"deadline": time.monotonic() + timeout if timeout else None, "cancelled": gone})
