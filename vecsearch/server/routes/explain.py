"""Heatmaps of what the model looks at: in an indexed image, in an upload, or of their similarity."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .. import shapes
from ..errors import responses
from ..guards import authorised
from ..params import EXPLAIN_SIDE, ClassifierName, ImageId, ImagenetClass, Label, Like, Side, Upload
from ..service import Svc

router = APIRouter(tags=["explain"], dependencies=[Depends(authorised)])


@router.get(
    "/images/{image_id}/explain",
    response_class=Response,
    summary="Heatmap of what the model looks at in an indexed image",
    responses=responses(401, 404, 422, _200=shapes.PNG_RESPONSE),
)
def explain_image(
    svc: Svc,
    image_id: ImageId,
    like: Like = None,
    imagenet_class: ImagenetClass = None,
    classifier: ClassifierName = None,
    label: Label = None,
    side: Side = EXPLAIN_SIDE,
) -> Response:
    """Where the evidence lies for the similarity to image `like`, an ImageNet `class`, or a classifier's class."""
    return shapes.png(
        svc.current().explain(image_id, like=like, imagenet_class=imagenet_class, classifier=classifier, label=label, side=side)
    )


@router.post(
    "/explain",
    response_class=Response,
    summary="Heatmap of what the model looks at in an uploaded image",
    responses=responses(401, 404, 413, 422, _200=shapes.PNG_RESPONSE),
)
def explain_upload(
    svc: Svc,
    file: Upload,
    like: Like = None,
    imagenet_class: ImagenetClass = None,
    classifier: ClassifierName = None,
    label: Label = None,
    side: Side = EXPLAIN_SIDE,
) -> Response:
    """As `GET /api/images/{id}/explain`, for the image in multipart field `file`."""
    data = svc.read_upload(file)
    return shapes.png(
        svc.current().explain(
            data,
            like=like,
            imagenet_class=imagenet_class,
            classifier=classifier,
            label=label,
            side=side,
            max_pixels=svc.max_pixels,
        )
    )


@router.post(
    "/images/{image_id}/explain",
    response_class=Response,
    summary="Why an indexed image is similar to an uploaded one",
    responses=responses(401, 404, 413, 422, _200=shapes.PNG_RESPONSE),
)
def explain_like_upload(svc: Svc, image_id: ImageId, file: Upload, side: Side = EXPLAIN_SIDE) -> Response:
    """The heatmap over indexed image `image_id` of its similarity to the image in multipart field `file`."""
    svc.index.image(image_id)  # an unknown id is a 404 before the upload is decoded
    other = svc.embed_upload(file)
    return shapes.png(svc.current().explain(image_id, like=other, side=side))
