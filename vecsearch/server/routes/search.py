"""Search by uploaded images, by vectors a client holds, or by an indexed image's id, with the same filters and pages."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from ...errors import BadVectorError
from ...model import MAX_TEXT_CHARS
from ...search import check_query
from .. import shapes
from ..errors import responses
from ..guards import authorised
from ..params import ImageId, Page, Uploads
from ..service import Svc, request_scope

router = APIRouter(tags=["search"], dependencies=[Depends(authorised)])

MAX_VECTORS = 64
"""Most query vectors one request may hold, as many as uploaded files."""
MAX_DIM = 65_536


class VectorQuery(BaseModel):
    """One query vector, or several (one result set each). Vectors need not be unit length: they are normalised."""

    model_config = ConfigDict(extra="forbid")
    vector: list[float] | None = Field(None, max_length=MAX_DIM, description="One query vector, the index's dimension.")
    vectors: list[list[float]] | None = Field(
        None, min_length=1, max_length=MAX_VECTORS, description=f"Several query vectors (at most {MAX_VECTORS})."
    )


@router.post(
    "/search",
    summary="Images most similar to uploaded images",
    responses=responses(401, 413, 422),
)
def search_upload(
    svc: Svc,
    request: Request,
    file: Uploads,
    page: Page,
) -> dict:
    """Multipart upload in field `file`; results are best first, ranks counted from 1 over all pages.

    The filters (`under`, `label`, `predicted` with `classifier`, `min_score`) keep only the images
    that pass all of them; k are still returned whenever k images pass. Several `file` parts give
    `searches`, one result set per file in the order sent (`name`, and `error` for a file that could
    not be read), from one model call.
    """
    k, offset, given, base = page.k, page.offset, page.given, shapes.api(request)
    if len(file) == 1:
        q = svc.embed_upload(file[0])
        ix = svc.current()
        hits = ix.search_vector(q, k + offset, **given)[offset:]
        next_url = shapes.next_url(f"{base}/search", k, offset, len(hits), given)
        return shapes.results(ix, hits, k=k, offset=offset, next_url=next_url, base=base)
    uploads = svc.read_uploads(file)
    ix = svc.index
    embedded = ix.embed_uploads(uploads.datas, max_pixels=svc.max_pixels, **request_scope())
    vectors = dict(zip(embedded.rows, embedded.vectors, strict=True))
    failed = embedded.failed | uploads.refused
    ix = svc.current()
    searches = []
    for i, name in enumerate(uploads.names):
        if i not in vectors:
            searches.append({"name": name, "error": f"Bad image: {failed[i]}"})
            continue
        hits = ix.search_vector(vectors[i], k + offset, **given)[offset:]
        searches.append({"name": name, **shapes.results(ix, hits, k=k, offset=offset, next_url=None, base=base)})
    return {"k": k, "offset": offset, "searches": searches}


@router.post(
    "/search/vector",
    summary="Images most similar to vectors the client holds",
    responses=responses(401, 413, 422),
)
def search_vector(
    svc: Svc,
    request: Request,
    body: VectorQuery,
    page: Page,
) -> dict:
    """JSON `{"vector": [...]}` (the result shape of `POST /search`) or `{"vectors": [[...], ...]}` (`searches`, one
    result set each). Cosine similarity: vectors are normalised; a wrong dimension, NaN/Inf or a zero vector is a 422
    that says which. The filters and pages are `POST /search`'s. No model call: embeddings from `POST /embed` fit."""
    if (body.vector is None) == (body.vectors is None):
        raise BadVectorError('Send exactly one of "vector" (one query) or "vectors" (several).')
    k, offset, given, base = page.k, page.offset, page.given, shapes.api(request)
    ix = svc.current()
    ix.store.require_info()
    dim = ix.info.dim
    if body.vector is not None:
        hits = ix.search_vector(check_query(body.vector, dim), k + offset, **given)[offset:]
        next_url = shapes.next_url(f"{base}/search/vector", k, offset, len(hits), given)
        return shapes.results(ix, hits, k=k, offset=offset, next_url=next_url, base=base)
    assert body.vectors is not None
    queries = [check_query(v, dim, row=n) for n, v in enumerate(body.vectors)]  # all checked before any search
    searches = [
        shapes.results(ix, ix.search_vector(q, k + offset, **given)[offset:], k=k, offset=offset, next_url=None, base=base)
        for q in queries
    ]
    return {"k": k, "offset": offset, "searches": searches}


class TextQuery(BaseModel):
    """One prompt, or several (one result set each), for a CLIP or SigLIP index."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description='Words to search by, e.g. "a red car".')
    texts: list[str] | None = Field(
        None, min_length=1, max_length=MAX_VECTORS, description=f"Several prompts (at most {MAX_VECTORS})."
    )


@router.post(
    "/search/text",
    summary="Images that best match words (CLIP or SigLIP index)",
    responses=responses(401, 422),
)
def search_text(
    svc: Svc,
    request: Request,
    body: TextQuery,
    page: Page,
) -> dict:
    """JSON `{"text": "a red car"}` (the result shape of `POST /search`) or `{"texts": [...]}` (`searches`, one result set
    each, `text` naming its prompt). The index's text tower embeds the prompts into its image vectors' space; results are
    by cosine, with the filters and pages of `POST /search`. An index whose backbone embeds images only is a 400 that
    names the backbones that can."""
    if (body.text is None) == (body.texts is None):
        raise BadVectorError('Send exactly one of "text" (one query) or "texts" (several).')
    k, offset, given, base = page.k, page.offset, page.given, shapes.api(request)
    ix = svc.current()
    ix.store.require_info()
    prompts = [body.text] if body.text is not None else list(body.texts or [])
    vectors = ix.embed_text(prompts)
    if body.text is not None:
        hits = ix.search_vector(vectors[0], k + offset, **given)[offset:]
        next_url = shapes.next_url(f"{base}/search/text", k, offset, len(hits), given)
        return shapes.results(ix, hits, k=k, offset=offset, next_url=next_url, base=base)
    searches = [
        {
            "text": t,
            **shapes.results(ix, ix.search_vector(q, k + offset, **given)[offset:], k=k, offset=offset, next_url=None, base=base),
        }
        for t, q in zip(prompts, vectors, strict=True)
    ]
    return {"k": k, "offset": offset, "searches": searches}


@router.get("/images/{image_id}/similar", summary="Images most similar to an indexed image", responses=responses(401, 404, 422))
def similar(
    svc: Svc,
    request: Request,
    image_id: ImageId,
    page: Page,
) -> dict:
    """Neighbours of an indexed image by its stored vector (no model call); itself left out. Filters as for search."""
    k, offset, given, base = page.k, page.offset, page.given, shapes.api(request)
    ix = svc.current()
    hits = ix.similar(image_id, k + offset, **given)[offset:]
    return shapes.results(
        ix,
        hits,
        k=k,
        offset=offset,
        query_id=image_id,
        next_url=shapes.next_url(f"{base}/images/{image_id}/similar", k, offset, len(hits), given),
        base=base,
    )
