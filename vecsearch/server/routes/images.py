"""Indexed images: pages of them, one image's metadata, its thumbnail and its original file (by id only)."""

from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from .. import shapes
from ..errors import responses
from ..guards import authorised
from ..params import ID_MAX, MAX_PAGE, ImageId
from ..service import Svc
from ..thumbnails import THUMB_SIZES

router = APIRouter(tags=["images"], dependencies=[Depends(authorised)])
_NOT_MODIFIED = {"description": "Not modified: the client's copy (If-None-Match) is current."}


@router.get("/images", summary="Indexed images, a page at a time", responses=responses(401, 422))
def list_images(
    svc: Svc,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Page size (1..{MAX_PAGE}).")] = 100,
    status: Annotated[str | None, Query(pattern="^(ok|failed)$", description="Only `ok` or `failed` images.")] = None,
) -> dict:
    ix = svc.current()
    total, rows = ix.images(offset, limit, status)
    notes = ix.annotations([r.id for r in rows], top=5)
    nxt = offset + len(rows)
    base = shapes.api(request)
    more = f"{base}/images?offset={nxt}&limit={limit}" + (f"&status={status}" if status else "")
    return {
        "total": total,
        "offset": offset,
        "limit": limit,
        "items": [shapes.image_dict(r, base) | notes[r.id] for r in rows],
        "next": more if nxt < total else None,
    }


@router.get("/images/{image_id}", summary="An image's metadata, labels and predictions", responses=responses(401, 404, 422))
def image(svc: Svc, request: Request, image_id: ImageId) -> dict:
    ix = svc.current()
    return shapes.image_dict(ix.image(image_id), shapes.api(request)) | ix.annotations([image_id], top=5)[image_id]


@router.get(
    "/images/{image_id}/thumbnail",
    summary="A JPEG thumbnail of an indexed image",
    response_class=Response,
    responses=responses(
        401,
        404,
        422,
        _304=_NOT_MODIFIED,
        _200={"content": {"image/jpeg": {}}, "description": "JPEG, longest side `size` pixels at most."},
    ),
)
def thumbnail(
    svc: Svc,
    request: Request,
    image_id: ImageId,
    size: Annotated[int, Query(ge=THUMB_SIZES[0], le=THUMB_SIZES[1], description="Longest side in pixels.")] = 256,
) -> Response:
    """Served by id from the path the index recorded; a client never names a file."""
    data, etag = svc.thumbnails.get(image_id, size, request.headers.get("if-none-match"))
    headers = {"ETag": etag, "Cache-Control": "private, max-age=300"}
    if data is None:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get(
    "/images/{image_id}/original",
    summary="The original file of an indexed image",
    response_class=Response,
    responses=responses(
        401,
        404,
        422,
        _304=_NOT_MODIFIED,
        _200={"content": {"image/*": {}}, "description": "The file's bytes as indexed, with its image type."},
    ),
)
def original(svc: Svc, request: Request, image_id: ImageId) -> Response:
    """Served by id only, from the path the index recorded, and only while the file is the one indexed
    (same size and modification time; otherwise 404: index its folder again)."""
    f = svc.current().original(image_id)
    etag = f'"o-{image_id}-{f.size}-{f.mtime_ns}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
        "Content-Disposition": "inline; filename*=UTF-8''" + quote(os.path.basename(f.path), safe=""),
    }
    if request.headers.get("if-none-match") == etag:
        f.close()
        return Response(status_code=304, headers=headers)
    return StreamingResponse(f, media_type=f.media_type, headers=headers | {"Content-Length": str(f.size)})
