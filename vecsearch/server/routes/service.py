"""Liveness, readiness and counts: what monitors, load balancers and the page ask first."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import responses
from ..guards import authorised
from ..service import Svc

router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness and what is loaded", responses=responses())
def health(svc: Svc) -> dict:
    """Cheap check for monitors; needs no token."""
    ix = svc.current()
    searcher = ix.searcher
    return {
        "status": "ok",
        "backbone": ix.backbone.name,
        "vectors": len(searcher) if searcher is not None else 0,
        "generation": ix.generation,
        "auth": svc.token is not None,
    }


@router.get(
    "/ready",
    summary="Readiness: 200 once the model is built and warmed and the index loaded",
    responses=responses(),
)
def ready(svc: Svc) -> dict:
    """For load balancers and container health checks; needs no token. 503 (with Retry-After) while
    the server starts; `/health` is liveness (the process answers), this says whether to send it traffic."""
    if not svc.ready:
        raise StarletteHTTPException(
            503, "Not ready: the server is still loading its model and index.", headers={"Retry-After": "1"}
        )
    ix = svc.current()
    searcher = ix.searcher
    return {
        "status": "ready",
        "vectors": len(searcher) if searcher is not None else 0,
        "generation": ix.generation,
        "batcher": getattr(ix.model, "batcher", None) is not None,
    }


@router.get("/stats", summary="Counts, backbone, weights and sizes", dependencies=[Depends(authorised)], responses=responses(401))
def stats(svc: Svc) -> dict:
    ix = svc.current()
    s = ix.stats()
    s["generation"] = ix.generation
    s["classifiers"] = [r["name"] for r in ix.classifiers()]
    s["labels"] = sorted(ix.label_counts())  # the user's classes: what `label` and `predicted` filter on
    s["max_upload_bytes"] = svc.max_upload_bytes
    s["max_pixels"] = svc.max_pixels
    batcher = ix.model.batcher
    s["batcher"] = batcher.stats() if batcher is not None else None  # model calls shared by concurrent uploads
    s["writes"] = svc.writes  # the page offers adding and removing only then
    return s
