"""Explain requests over one index: every check that needs no model first (an unknown class, a
k-NN classifier, a missing file or one that is not an image), then the model, then the heatmap
(`explain` holds the maths). The facade's explain methods hand their work here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypedDict

from . import classifiers, labels, queries
from . import explain as maps
from .backbones import get_spec
from .config import MAX_IMAGE_PIXELS
from .errors import check_keywords
from .model import IndexModel
from .search import Hit
from .store import Store


class ExplainOptions(TypedDict, total=False):
    """What `VecIndex.explain` explains and how the overlay is drawn; every one optional."""

    like: Any
    imagenet_class: str | None
    classifier: str | None
    label: str | None
    weights: Any
    side: int
    max_pixels: int | None


EXPLAIN_DEFAULTS: dict[str, Any] = {
    "like": None,
    "imagenet_class": None,
    "classifier": None,
    "label": None,
    "weights": None,
    "side": maps.OVERLAY_SIDE,
    "max_pixels": MAX_IMAGE_PIXELS,
}


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Every explain option, the defaults filled in; a misspelt one is a TypeError."""
    check_keywords("explain", options, EXPLAIN_DEFAULTS)
    return {**EXPLAIN_DEFAULTS, **options}


@dataclass
class Parts:
    """What an explanation reads: the store, the index folder (saved classifiers, the ImageNet
    top), the model and the loaded classifiers."""

    store: Store
    directory: Path
    model: IndexModel
    loaded: classifiers.LoadedClassifiers


def explain(
    p: Parts,
    image: Any,
    *,
    like: Any,
    imagenet_class: str | None,
    classifier: str | None,
    label: str | None,
    weights: Any,
    side: int,
    max_pixels: int | None,
) -> maps.Explanation:
    """The heatmap `VecIndex.explain` describes."""
    maps.check_explainable(get_spec(p.model.name))
    target = maps.as_target(like, imagenet_class, classifier, label)
    if imagenet_class is not None:
        labels.find_classes(imagenet_class)
    row = classifiers.find(p.store, classifier) if target == "classifier" else None
    if row is not None:
        maps.kind_of(row)  # a k-NN is refused before any model call
    data, path = queries.image_data(p.store, image)
    pixels = p.model.decode(data, path, max_pixels)
    clf = p.loaded.get(row) if row is not None else None
    top = labels.load_top(p.store, p.directory, weights) if target == "imagenet" else None
    other, like_name = queries.like_vector(p.store, p.model, like) if target == "similar" else (None, None)
    seen = p.model.look(data, path, side=side, max_pixels=max_pixels, pixels=pixels)
    layer = p.model.maps().layer
    if target == "similar":
        assert other is not None
        return maps.explain_similar(seen, other, layer, like=like_name)
    if target == "imagenet":
        assert top is not None
        return maps.explain_imagenet(seen, top, layer, imagenet_class)
    assert row is not None
    if row["kind"] == "head":
        return p.model.run(maps.explain_head, seen, clf, row, layer, label)  # a Keras model too
    return maps.explain_probe(seen, clf, row, layer, label)


def explain_hits(
    p: Parts, query: Any, hits: Iterable[Hit], *, side: int, max_pixels: int | None
) -> list[tuple[maps.Explanation, maps.Explanation]]:
    """For each hit, (the query's map against it, its map against the query); the query is read
    and run through the model once, each hit's file once."""
    maps.check_explainable(get_spec(p.model.name))
    seen_q = p.model.look(*queries.image_data(p.store, query), side=side, max_pixels=max_pixels)
    q_name = seen_q.path or "the query"
    out = []
    for h in hits:
        seen_h = p.model.look(*queries.image_data(p.store, h.id), side=side, max_pixels=max_pixels)
        layer = p.model.maps().layer
        out.append(
            (
                maps.explain_similar(seen_q, seen_h.unit, layer, like=f"#{h.id} {h.path}"),
                maps.explain_similar(seen_h, seen_q.unit, layer, like=q_name),
            )
        )
    return out


def save_pairs(hits: Sequence[Hit], pairs: Sequence[tuple[maps.Explanation, maps.Explanation]], out_dir: Path) -> list[Path]:
    """One PNG per hit in `out_dir`: the query's "why similar" map beside the hit's."""
    written = []
    for h, (q, r) in zip(hits, pairs, strict=True):
        name = f"{h.rank:02d}-{Path(h.path).stem}.png"
        written.append(maps.save_pair(q, r, out_dir / name, [f"query vs #{h.rank}", f"#{h.rank} vs query: {h.score:.4f}"]))
    return written
