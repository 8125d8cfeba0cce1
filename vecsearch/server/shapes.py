"""The JSON shapes of results and images, and the PNG response of a heatmap: one place, so every
route that returns an image or a hit returns the same keys."""

from __future__ import annotations

import os
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import Response

from ..api import Hit, VecIndex
from ..explain import Explanation
from ..store import ImageRecord
from .params import MAX_OFFSET

API = "/api/v1"
"""Where the API lives; `/api` is an alias of it kept for older clients. Every link a response holds starts here
(after the root path a reverse proxy serves the app under: `api(request)`)."""


def api(request: Request | str) -> str:
    """The API's address as clients see it: the root path (`--root-path`, behind a proxy) then API.
    Takes a request, or a root path ("" for none)."""
    root = request if isinstance(request, str) else request.scope.get("root_path", "")
    return root.rstrip("/") + API


PNG_RESPONSE = {"content": {"image/png": {}}, "description": "The heatmap over the image (PNG, the image's aspect ratio)."}


def next_url(base: str, k: int, offset: int, got: int, filters: dict | None = None) -> str | None:
    """The next page's address: a full page may have more behind it; a short one is the last."""
    if got < k or offset + k > MAX_OFFSET:
        return None
    return f"{base}?" + urlencode({"k": k, "offset": offset + k, **(filters or {})})


def results(
    ix: VecIndex, hits: list[Hit], *, k: int, offset: int, next_url: str | None, query_id: int | None = None, base: str = API
) -> dict:
    """A page of results; `base` is where links point (`api(request)`)."""
    notes = ix.annotations([h.id for h in hits], top=3)
    items = []
    for n, h in enumerate(hits[:k]):
        items.append(
            {
                "rank": offset + n + 1,
                "id": h.id,
                "path": h.path,
                "name": os.path.basename(h.path),
                "folder": os.path.dirname(h.path),
                "score": h.score,
                "thumbnail": f"{base}/images/{h.id}/thumbnail",
                "original": f"{base}/images/{h.id}/original",
                **notes[h.id],
            }
        )
    out = {"k": k, "offset": offset, "results": items, "next": next_url}
    if query_id is not None:
        out = {"query_id": query_id} | out
    return out


def image_dict(rec: ImageRecord, base: str = API) -> dict:
    ok = rec.status == "ok"
    return {
        "id": rec.id,
        "path": rec.path,
        "name": os.path.basename(rec.path),
        "folder": os.path.dirname(rec.path),
        "size": rec.size,
        "mtime_ns": rec.mtime_ns,
        "sha256": rec.sha256,
        "width": rec.width,
        "height": rec.height,
        "status": rec.status,
        "reason": rec.reason,
        "indexed_at": rec.indexed_at.isoformat(timespec="seconds") + "Z",
        "thumbnail": f"{base}/images/{rec.id}/thumbnail" if ok else None,
        "similar": f"{base}/images/{rec.id}/similar" if ok else None,
        "original": f"{base}/images/{rec.id}/original" if ok else None,
    }


def png(result: Explanation) -> Response:
    headers = {
        "Cache-Control": "private, max-age=300",
        "X-Explain-Score": f"{result.score:.6f}",
        "X-Explain-Method": result.method,
    }
    return Response(result.to_png(), media_type="image/png", headers=headers)
