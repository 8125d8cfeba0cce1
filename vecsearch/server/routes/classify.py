"""Saved classifiers, and classifying an upload with one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ..errors import responses
from ..guards import authorised
from ..params import Upload
from ..service import Svc

router = APIRouter(tags=["classify"], dependencies=[Depends(authorised)])


@router.get("/classifiers", summary="Saved classifiers", responses=responses(401))
def classifiers(svc: Svc) -> dict:
    return {"items": [{k: v for k, v in row.items() if k != "path"} for row in svc.current().classifiers()]}


@router.post("/classify", summary="Classify an uploaded image with a saved classifier", responses=responses(401, 404, 413, 422))
def classify(
    svc: Svc,
    file: Upload,
    classifier: Annotated[str | None, Query(max_length=64, description="Classifier name (default: the newest).")] = None,
    top: Annotated[int, Query(ge=1, le=100, description="How many classes to list.")] = 5,
) -> dict:
    """The same result shape as `vecsearch classify IMG --json` and `VecIndex.classify` (`path` is null)."""
    ix = svc.index
    model = ix.classifier(classifier)  # an unknown name is a 404 before the upload is decoded
    return ix.classify(svc.embed_upload(file), model=model, top=top).to_dict()
