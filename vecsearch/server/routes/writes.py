"""Changing the index over HTTP: add uploads or server-side paths, remove, label, train a classifier.

Every route needs the admin check (writes on, the admin token when there is one) and goes through
the index object, which holds the writer lock: a CLI run writing at the same time makes a request
wait a bounded time, then a 503 with Retry-After. Each write is durable before its response.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...classes import MAX_LABEL
from ...classify import DEFAULT_K as KNN_K
from ...uploads import LOCK_WAIT
from ..errors import responses
from ..guards import admin
from ..params import TEXT, ImageId, Uploads
from ..service import Service, Svc

router = APIRouter(tags=["write"], dependencies=[Depends(admin)])

MAX_PATHS = 1000


class PathsBody(BaseModel):
    paths: list[Annotated[str, Field(min_length=1, max_length=4096, pattern=TEXT)]] = Field(
        min_length=1, max_length=MAX_PATHS, description="Absolute server-side files or folders, under an allowed root."
    )


class LabelBody(BaseModel):
    label: str = Field(min_length=1, max_length=MAX_LABEL, pattern=TEXT, description="A class of your own.")
    split: Literal["train", "test"] | None = Field(None, description="Keep it for training or for evaluation only.")


class TrainBody(BaseModel):
    kind: Literal["knn", "probe"] = "knn"
    k: int = Field(KNN_K, ge=1, le=100, description="Neighbours voting (knn only).")
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Default: the kind.")


@router.post("/images", summary="Add uploaded images to the index", responses=responses(401, 403, 409, 413, 422))
def add_images(svc: Svc, file: Uploads) -> dict:
    """Each part is stored in the index folder under its content hash, embedded and committed before
    the answer; per part `indexed`, `duplicate` (the same bytes are already indexed: their id) or
    `failed` with the reason (one over the upload cap too: the others still go in)."""
    uploads = svc.read_uploads(file)
    ix = svc.index
    items = ix.add_bytes(zip(uploads.names, uploads.datas, strict=True), max_pixels=svc.max_pixels)
    for i, reason in uploads.refused.items():  # refused before decoding: say why, not "empty"
        items[i].update(status="failed", reason=reason, id=None)
    counts = {s: sum(i["status"] == s for i in items) for s in ("indexed", "duplicate", "failed")}
    return {"items": items, "indexed": counts["indexed"], "duplicates": counts["duplicate"], "failed": counts["failed"]} | {
        "generation": ix.generation
    }


def allowed(svc: Service, given: str) -> Path:
    """A server-side path resolved (symbolic links followed), if it lies under an allowed root; else 403."""
    if not os.path.isabs(given):
        raise StarletteHTTPException(422, f"Paths must be absolute on the server, got {given!r}.")
    path = Path(given).resolve()
    if not any(path == root or root in path.parents for root in svc.allow_roots):
        where = ", ".join(map(str, svc.allow_roots)) or "none (the server was started without --allow-root)"
        raise StarletteHTTPException(403, f"{given} is not under an allowed root; allowed: {where}.")
    return path


@router.post("/images/paths", summary="Index server-side files or folders", responses=responses(401, 403, 409, 422))
def add_paths(svc: Svc, body: PathsBody) -> dict:
    """Index files and folders on the server, incrementally as `vecsearch index` does, only under the
    roots its operator allowed (symbolic links resolved first; what they point to must be inside)."""
    paths = [allowed(svc, p) for p in body.paths]
    return svc.index.add(paths, wait=LOCK_WAIT).to_dict()


@router.delete("/images/{image_id}", summary="Remove an image from the index", responses=responses(401, 403, 404, 409, 422))
def remove_image(svc: Svc, image_id: ImageId) -> dict:
    """The entry goes (vector, labels, predictions); an upload's stored copy is deleted, other files never are."""
    summary = svc.index.remove_ids([image_id])
    path = summary.removed_paths[0] if summary.removed_paths else None
    return {"id": image_id, "path": path, "removed": True, "deleted_file": bool(summary.deleted_files)}


@router.put("/images/{image_id}/label", summary="Give an image a label of your own", responses=responses(401, 403, 404, 409, 422))
def set_label(svc: Svc, image_id: ImageId, body: LabelBody) -> dict:
    """The label classifiers train on (as `vecsearch teach`); `split` "test" keeps it for evaluation only."""
    return svc.index.set_label(image_id, body.label, body.split)


@router.delete("/images/{image_id}/label", summary="Clear an image's label", responses=responses(401, 403, 404, 409, 422))
def clear_label(svc: Svc, image_id: ImageId) -> dict:
    return svc.index.clear_label(image_id)


@router.post("/classifiers", summary="Train a classifier on the labels", responses=responses(401, 403, 409, 422))
def train(svc: Svc, body: TrainBody) -> dict:
    """Train (k-NN or a linear probe), evaluate, save, and predict every unlabelled image, as
    `vecsearch train`; too few labels is a 422 that says what is missing."""
    return svc.index.train_classifier(body.kind, k=body.k, name=body.name).to_dict()
