"""GET /metrics: the Prometheus scrape, outside the versioned API (scrapers expect it at the root)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials

from ..errors import responses
from ..guards import authorised, bearer
from ..observe import serve_metrics
from ..service import Svc

router = APIRouter(tags=["service"])


async def scrape_allowed(request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The read token, unless the operator made the metrics public (`metrics_public`)."""
    if not request.app.state.service.metrics_public:
        await authorised(request, creds)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    dependencies=[Depends(scrape_allowed)],
    responses=responses(
        401,
        _200={"content": {"text/plain": {}}, "description": "The Prometheus text exposition format."},
    ),
)
def metrics(svc: Svc) -> Response:
    """Requests and latencies by route template, method and status; vectors in the index, its
    generation; model batch sizes, queue depth, rejections and drops when the micro-batcher runs."""
    assert svc.metrics is not None  # create_app sets it
    svc.current()  # caught up with commits from other processes first, as every read is: the gauges are current
    return serve_metrics(svc.metrics, svc.gather_metrics)
