"""Embeddings out: uploaded images to their unit vectors, with the model that made them, as JSON or `.npy`."""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from ..errors import responses
from ..guards import authorised
from ..params import Uploads
from ..service import Svc, request_scope

router = APIRouter(tags=["embed"], dependencies=[Depends(authorised)])

NPY = "application/x-npy"
MODEL_KEYS = ("backbone", "weights_kind", "weights_fingerprint", "dim", "precision")

Format = Annotated[
    Literal["json", "npy"] | None,
    Query(alias="format", description=f"`npy`: a float32 `.npy` array (also chosen by `Accept: {NPY}`); default JSON."),
]


@router.post(
    "/embed",
    summary="Unit vectors of uploaded images, and the model that made them",
    responses=responses(
        401,
        413,
        422,
        _200={
            "description": "JSON (`model`, `items` with `vector` or `error`), or a float32 `.npy` array of the rows that "
            "embedded (headers X-Vecsearch-Rows: which uploads, X-Vecsearch-Failed: how many could not be read).",
            "content": {"application/json": {}, NPY: {}},
        },
    ),
)
def embed(svc: Svc, request: Request, file: Uploads, fmt: Format = None) -> Response:
    """Each part named `file` is decoded exactly as indexing decodes and embedded with the index's model in one call;
    the vectors equal `VecIndex.embed_bytes` of the same bytes, so `POST /search/vector` and any other store can use
    them. A file that cannot be read is listed with its reason; the others are still embedded."""
    uploads = svc.read_uploads(file)
    ix = svc.index
    done = ix.embed_uploads(uploads.datas, max_pixels=svc.max_pixels, **request_scope())
    meta = ix.model.meta(ix.info)
    model = {key: meta[key] for key in MODEL_KEYS}
    failed = done.failed | uploads.refused  # a refused part's own reason, not the decoder's "empty"
    if fmt == "npy" or (fmt is None and NPY in request.headers.get("accept", "")):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(done.vectors, dtype="<f4"), allow_pickle=False)
        headers = {
            "X-Vecsearch-Rows": ",".join(map(str, done.rows)),
            "X-Vecsearch-Failed": str(len(failed)),
            "X-Vecsearch-Backbone": str(model["backbone"]),
            "X-Vecsearch-Dim": str(model["dim"]),
            "X-Vecsearch-Fingerprint": str(model["weights_fingerprint"]),
        }
        return Response(buf.getvalue(), media_type=NPY, headers=headers)
    vectors = dict(zip(done.rows, done.vectors.tolist(), strict=True))
    items = [
        {"name": name, "vector": vectors[i]} if i in vectors else {"name": name, "error": f"Bad image: {failed[i]}"}
        for i, name in enumerate(uploads.names)
    ]
    # Straight to json.dumps: FastAPI's encoder walks each of the floats, 10x slower on 32 x 2048.
    return JSONResponse({"model": model, "items": items, "embedded": len(done.rows), "failed": len(failed)})
