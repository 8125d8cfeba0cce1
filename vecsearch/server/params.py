"""The query and path parameters routes share, declared once with their bounds and help text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError

from ..config import DEFAULT_K, MAX_FILES

MAX_K = 1000
MAX_OFFSET = 10_000
MAX_PAGE = 500
EXPLAIN_SIDE = 384
ID_MAX = 2**63 - 1  # SQLite integers; larger ids would overflow, not just miss
TEXT = r"^[^\x00-\x1f\x7f]*$"  # no control characters: they are never in a label, and NUL breaks paths

ImageId = Annotated[int, PathParam(ge=1, le=ID_MAX, description="Image id, as returned by search results.")]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"How many neighbours (1..{MAX_K}).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Skip this many best results first (pagination).")]
Upload = Annotated[UploadFile, File(description="An image file (JPEG, PNG, WebP, GIF, BMP, TIFF).")]
Uploads = Annotated[
    list[UploadFile],
    File(
        description=f"One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF), each in a part named `file`; at most {MAX_FILES}."
    ),
]
Like = Annotated[int | None, Query(ge=1, le=ID_MAX, description="Explain why the image is similar to this indexed image.")]
ImagenetClass = Annotated[
    str | None,
    Query(
        alias="class", max_length=100, description="An ImageNet class name or WordNet id (the default target: the top-1 class)."
    ),
]
ClassifierName = Annotated[str | None, Query(max_length=64, description="A saved probe or fine-tuned head instead.")]
Label = Annotated[
    str | None, Query(max_length=200, description="With `classifier`: the class to explain (default: its prediction).")
]
Side = Annotated[int, Query(ge=16, le=1024, description="Longest side of the PNG in pixels.")]
Under = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=4096,
        pattern=TEXT,
        description="Only images in this folder, at any depth (an absolute path, as in results' `folder`).",
    ),
]
UserLabelFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=200, pattern=TEXT, description="Only images taught this user label (`vecsearch teach`)."),
]
Predicted = Annotated[
    str | None,
    Query(min_length=1, max_length=200, pattern=TEXT, description="Only images a saved classifier predicted as this label."),
]
PredictedBy = Annotated[
    str | None,
    Query(
        alias="classifier",
        min_length=1,
        max_length=64,
        pattern=TEXT,
        description="With `predicted`: whose predictions (default: the newest saved classifier).",
    ),
]
MinScore = Annotated[
    float | None, Query(ge=-1.0, le=1.0, allow_inf_nan=False, description="Only results at least this similar (cosine, -1..1).")
]


@dataclass(frozen=True)
class SearchPage:
    """A search's page (k best after `offset`) and the filters given, as `VecIndex.search_vector` keywords."""

    k: int
    offset: int
    given: dict


def search_page(
    k: K = DEFAULT_K,
    offset: Offset = 0,
    under: Under = None,
    label: UserLabelFilter = None,
    predicted: Predicted = None,
    predicted_by: PredictedBy = None,
    min_score: MinScore = None,
) -> SearchPage:
    """The query parameters every search route takes, declared once (a dependency)."""
    return SearchPage(k, offset, filters(under, label, predicted, predicted_by, min_score))


def filters(under: str | None, label: str | None, predicted: str | None, classifier: str | None, min_score: float | None) -> dict:
    """The search filters that were given, as `VecIndex.search_vector` keywords (and query parameters)."""
    given = {"under": under, "label": label, "predicted": predicted, "classifier": classifier, "min_score": min_score}
    return {k: v for k, v in given.items() if v is not None}


def _declared(dependant: Any) -> frozenset[str]:
    names: set[str] = set()
    stack = [dependant]
    while stack:
        d = stack.pop()
        names.update(p.alias for p in d.query_params)
        stack.extend(d.dependencies)
    return frozenset(names)


_DECLARED: dict[int, frozenset[str]] = {}


async def known_query(request: Request) -> None:
    """Refuse query parameters a route does not declare (a misspelt filter would otherwise widen
    the search silently). API routes only; `token` is everywhere: it is how a browser sends the token."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params or not getattr(route, "include_in_schema", False):
        return  # the page keeps its own state in its address; the docs take none
    declared = _DECLARED.get(id(route))
    if declared is None:
        declared = _DECLARED[id(route)] = _declared(dependant) | {"token"}
    unknown = sorted({k for k in request.query_params if k not in declared})
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (this route takes: {', '.join(sorted(declared))})",
                }
                for name in unknown
            ]
        )


Page = Annotated[SearchPage, Depends(search_page)]
