"""`vecsearch.Client` against a real server: the index object's answers, over HTTP, for the same index."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from helpers import live_server  # noqa: E402


@pytest.fixture(scope="module")
def both(labelled_served_index):
    """(root, ix, client): the labelled served index, and a Client of a live server over it with a token."""
    from vecsearch import Client
    from vecsearch.server import create_app

    root, ix = labelled_served_index
    with live_server(create_app(ix, token="r3ad")) as base, Client(base, token="r3ad") as client:
        yield root, ix, client


def test_search_similar_and_vectors_answer_as_the_index_does(both):
    root, ix, client = both
    q = root / "photos" / "c" / "plain.png"
    query = next((root / "photos" / "a").glob("*.jpg"))
    # An uploaded file is not known to the server as indexed: it finds itself, as include_self does locally.
    assert client.search(query, k=5) == ix.search(query, k=5, include_self=True)
    assert client.search(query.read_bytes(), k=4, under=str(root / "photos" / "b")) == ix.search(
        query.read_bytes(), k=4, under=str(root / "photos" / "b")
    )
    vec = ix.embed([q])[0]
    assert client.search_vector(vec, k=6) == ix.search_vector(vec, k=6)
    assert client.search(vec, k=3, label="cat") == ix.search(vec, k=3, label="cat")
    assert client.search_vectors(np.stack([vec, -vec]), k=3) == [ix.search_vector(vec, 3), ix.search_vector(-vec, 3)]
    first = ix.search_vector(vec, 1)[0].id
    assert client.similar(first, k=5, min_score=-1.0) == ix.similar(first, k=5, min_score=-1.0)
    assert len(client) == len(ix)


def test_embed_and_records_match_the_index(both):
    root, ix, client = both
    paths = sorted((root / "photos" / "a").glob("*.jpg"))[:3]
    got = client.embed(paths)
    assert got.shape == (3, 32) and got.dtype == np.float32
    assert np.all(np.sum(got * ix.embed(paths), axis=1) >= 0.9999)
    assert float(client.embed_bytes(paths[0].read_bytes()) @ ix.embed_bytes(paths[0].read_bytes())) >= 0.9999
    assert client.embed([]).shape == (0, 32)
    hit = ix.search_vector(got[0], 1)[0]
    assert client.image(hit.id) == _to_the_second(ix.image(hit.id))  # the API's times are to the second
    total, recs = ix.images(offset=2, limit=3)
    assert client.images(offset=2, limit=3) == (total, [_to_the_second(r) for r in recs])
    total, recs = ix.images(status="failed")
    assert client.images(status="failed") == (total, [_to_the_second(r) for r in recs]) and total == 1
    assert [c["name"] for c in client.classifiers()] == [c["name"] for c in ix.classifiers()]
    assert client.classify(paths[1], name="nn1") == ix.classify(paths[1].read_bytes(), name="nn1")


def _to_the_second(rec):
    import dataclasses

    return dataclasses.replace(rec, indexed_at=rec.indexed_at.replace(microsecond=0))


def test_errors_come_back_as_the_library_s_own(both, tmp_path):
    from vecsearch import BadImageError, BadVectorError, ClassifierNotFoundError, Client, NotIndexedError, ServiceBusyError

    root, ix, client = both
    with pytest.raises(NotIndexedError):
        client.image(999_999)
    with pytest.raises(BadVectorError, match="31 dimensions"):
        client.search_vector(np.ones(31, np.float32))
    with pytest.raises(BadVectorError, match="all zeros"):
        client.search_vector(np.zeros(32, np.float32))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    good = next((root / "photos" / "a").glob("*.jpg"))
    with pytest.raises(BadImageError) as e:
        client.embed([good, bad])
    assert e.value.path == "bad.jpg" and e.value.reason
    with pytest.raises(BadImageError):
        client.search(b"not an image")
    with pytest.raises(ClassifierNotFoundError):
        client.classify(good, name="no-such")
    with pytest.raises(TypeError, match="lable"):
        client.search(good, lable="cat")  # type: ignore[call-arg]
    # No token: the server's 401 as a VecsearchError that says what to send.
    anon = Client(client.url)
    with pytest.raises(Exception, match="token") as e:
        anon.stats()
    assert e.value.status == 401  # type: ignore[attr-defined]
    anon.close()

    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": "queue full", "type": "ServiceBusyError"}, headers={"Retry-After": "3"})

    with Client("http://x", transport=httpx.MockTransport(busy)) as c, pytest.raises(ServiceBusyError) as e:
        c.search_vector(np.ones(32, np.float32))
    assert e.value.retry_after == 3.0


def test_writes_through_the_client_leave_what_the_index_would_hold(tmp_path):
    """add (a folder walked on the client), add_bytes, labels, training and remove_ids over HTTP; the index
    afterwards holds exactly those vectors, and the read token alone cannot write."""
    from helpers import make_image

    from vecsearch import Client, VecsearchError, open_index
    from vecsearch.server import create_app

    photos = tmp_path / "photos"
    for i in range(6):
        make_image(photos / ("cats" if i < 3 else "dogs") / f"p{i}.png", seed=300 + i)
    (photos / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    ix = open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7)
    seed = tmp_path / "seed"
    make_image(seed / "s.png", seed=1)
    ix.add([seed])
    with live_server(create_app(ix, token="r", admin_token="w")) as base, Client(base, token="w") as c:
        summary = c.add([photos])
        assert (summary.indexed, summary.unchanged, len(summary.failed), summary.total) == (6, 0, 1, 7)
        again = c.add([photos / "cats"])
        assert (again.indexed, again.unchanged) == (0, 3)  # the same bytes are the same images
        items = c.add_bytes([("extra.png", (photos / "cats" / "p0.png").read_bytes())])
        assert items[0]["status"] == "duplicate"
        files = sorted(photos.glob("*/p*.png"))
        ids = [c.search(f, k=1)[0].id for f in files]
        assert [ix.image(i).sha256 for i in ids] == [__import__("hashlib").sha256(f.read_bytes()).hexdigest() for f in files]
        for i, f in zip(ids, files, strict=True):
            c.set_label(i, f.parent.name)
        trained = c.train_classifier("knn", k=1, name="nn")
        assert trained["name"] == "nn" and trained["kind"] == "knn"
        assert c.classify(files[0], name="nn").label == "cats"
        assert c.clear_label(ids[0])["label"] is None
        gone = c.remove_ids(ids[:2])
        assert gone.removed == 2 and len(gone.deleted_files) == 2 and all("uploads" in p for p in gone.deleted_files)
        assert len(ix) == 1 + 6 - 2
        with Client(base, token="r") as reader, pytest.raises(VecsearchError, match="only read") as e:
            reader.add_bytes([("x.png", files[3].read_bytes())])
        assert e.value.status == 403  # type: ignore[attr-defined]
    ix.close()
