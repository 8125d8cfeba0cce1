"""Search by an uploaded image or by an indexed image's id, with the same filters and pages."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ...config import DEFAULT_K
from .. import shapes
from ..errors import responses
from ..guards import authorised
from ..params import ImageId, K, MinScore, Offset, Predicted, PredictedBy, Under, Upload, UserLabelFilter, filters
from ..service import Svc

router = APIRouter(tags=["search"], dependencies=[Depends(authorised)])


@router.post("/search", summary="Images most similar to an uploaded image", responses=responses(401, 413, 422))
def search_upload(
    svc: Svc,
    request: Request,
    file: Upload,
    k: K = DEFAULT_K,
    offset: Offset = 0,
    under: Under = None,
    label: UserLabelFilter = None,
    predicted: Predicted = None,
    predicted_by: PredictedBy = None,
    min_score: MinScore = None,
) -> dict:
    """Multipart upload in field `file`; results are best first, ranks counted from 1 over all pages.

    The filters (`under`, `label`, `predicted` with `classifier`, `min_score`) keep only the images
    that pass all of them; k are still returned whenever k images pass.
    """
    given = filters(under, label, predicted, predicted_by, min_score)
    q = svc.embed_upload(file)
    ix = svc.current()
    hits = ix.search_vector(q, k + offset, **given)[offset:]
    base = shapes.api(request)
    return shapes.results(
        ix, hits, k=k, offset=offset, next_url=shapes.next_url(f"{base}/search", k, offset, len(hits), given), base=base
    )


@router.get("/images/{image_id}/similar", summary="Images most similar to an indexed image", responses=responses(401, 404, 422))
def similar(
    svc: Svc,
    request: Request,
    image_id: ImageId,
    k: K = DEFAULT_K,
    offset: Offset = 0,
    under: Under = None,
    label: UserLabelFilter = None,
    predicted: Predicted = None,
    predicted_by: PredictedBy = None,
    min_score: MinScore = None,
) -> dict:
    """Neighbours of an indexed image by its stored vector (no model call); itself left out. Filters as for search."""
    given = filters(under, label, predicted, predicted_by, min_score)
    ix = svc.current()
    hits = ix.similar(image_id, k + offset, **given)[offset:]
    base = shapes.api(request)
    return shapes.results(
        ix,
        hits,
        k=k,
        offset=offset,
        query_id=image_id,
        next_url=shapes.next_url(f"{base}/images/{image_id}/similar", k, offset, len(hits), given),
        base=base,
    )
