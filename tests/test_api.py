"""The index object as a Python user meets it: one method per feature, every query form, one writer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import make_image
from PIL import Image

from vecsearch import IndexLockedError, VecsearchError


@pytest.fixture
def indexed(tiny_index, photos):
    tiny_index.add([photos])
    return tiny_index


def test_every_query_form_gives_the_same_neighbours(indexed, tmp_path):
    """A file, its bytes, the PIL image and its vector are one query; brute force is the reference."""
    q = make_image(tmp_path / "q.png", seed=77, size=(60, 40))
    by_path = indexed.search(q, k=5)
    vec = indexed.embed([q])[0]
    ids, mat, _ = indexed.store.vectors()
    order = np.lexsort((ids, -(mat.astype(np.float64) @ vec.astype(np.float64))))[:5]
    assert [h.id for h in by_path] == ids[order].tolist()
    assert [h.id for h in indexed.search(q.read_bytes(), k=5)] == [h.id for h in by_path]
    with Image.open(q) as img:
        assert [h.id for h in indexed.search(img, k=5)] == [h.id for h in by_path]
    assert [h.id for h in indexed.search(vec * 3.0, k=5)] == [h.id for h in by_path]  # any length: normalised
    with pytest.raises(VecsearchError, match="Cannot search with a int"):
        indexed.search(42)


def test_similar_by_id_leaves_the_image_out(indexed):
    first = int(indexed.store.vector_ids()[0])
    hits = indexed.similar(first, k=3)
    assert first not in [h.id for h in hits] and len(hits) == 3
    assert [h.id for h in hits] == [h.id for h in indexed.search(indexed.vector(first), k=4)][1:]


def test_pages_of_images_and_annotations(indexed):
    total, page = indexed.images(offset=2, limit=5)
    assert total == 12 and [r.id for r in page] == indexed.store.vector_ids()[2:7].tolist()
    assert indexed.images(status="failed") == (0, [])
    with pytest.raises(VecsearchError, match="status"):
        indexed.images(status="bogus")
    notes = indexed.annotations([page[0].id])
    assert notes == {page[0].id: {"imagenet_labels": [], "user_label": None, "predictions": []}}


def test_a_second_writer_is_refused_while_one_writes(indexed, photos):
    from vecsearch.config import LOCK_NAME
    from vecsearch.files import WriterLock

    with WriterLock(indexed.directory / LOCK_NAME).held():
        with pytest.raises(IndexLockedError, match="Another vecsearch run"):
            indexed.add([photos])
    assert indexed.add([photos]).unchanged == 12  # released: the next run goes ahead


def test_an_unencodable_pil_image_is_a_bad_image(indexed):
    from vecsearch import BadImageError

    img = Image.new("I;16", (8, 8))
    buf = io.BytesIO()
    img.save(buf, "PNG")  # I;16 does encode as PNG: a control that the path works
    assert indexed.search(img, k=1)
    with pytest.raises(BadImageError):
        indexed.embed_image(object())
