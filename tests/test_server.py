"""The HTTP service against real HTTP clients: every endpoint, every hostile input, live reloads.

References are independent of the server: plain Keras on `keras.utils.load_img` pixels and
NumPy brute-force cosine over the stored vectors, PIL for thumbnails, the classify
module's own file-based prediction.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

with warnings.catch_warnings():  # Starlette nags about its httpx-based client; it is the one FastAPI documents
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from helpers import keras_recipe, live_server, make_image, png_header_only, run_json, start_serve, wait_until_serving  # noqa: E402

TESTS = Path(__file__).parent


# -- fixtures and helpers -------------------------------------------------------------
@pytest.fixture(scope="module")
def built(served_index):
    """conftest's served_index (12 photos, a corrupt file, 3 query images): shared read-only."""
    return served_index


@pytest.fixture(scope="module")
def client(built):
    from vecsearch.server import create_app

    _, ix = built
    with TestClient(create_app(ix), base_url="http://127.0.0.1") as c:
        yield c


def _upload(path: Path | bytes, name="q.png", mime="image/png"):
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    return {"file": (name, data, mime)}


def _keras_unit_vector(path: Path) -> np.ndarray:
    """The reference embedding: the plain Keras recipe on a freshly built seeded tiny model."""
    import keras
    import tiny_backbone

    keras.utils.set_random_seed(7)
    model = tiny_backbone._build(None, False)
    return keras_recipe(model, [path], (32, 32), tiny_backbone._preprocess)[0]


def _brute_force(ix, q: np.ndarray, k: int, exclude=()) -> tuple[list[int], np.ndarray]:
    ids, mat, _ = ix.store.vectors(dim=ix.info.dim)
    scores = mat.astype(np.float64) @ q.astype(np.float64)
    keep = ~np.isin(ids, list(exclude))
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order].tolist(), scores[order]


def _assert_json_error(r: httpx.Response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


# -- endpoints --------------------------------------------------------------------------
def test_health_stats_and_openapi(client, built):
    _, ix = built
    h = client.get("/api/health").json()
    assert h == {"status": "ok", "backbone": "tiny", "vectors": 12, "generation": ix.store.generation(), "auth": False}
    s = client.get("/api/stats").json()
    assert (s["images"], s["vectors"], s["ok"], s["failed"], s["dim"]) == (13, 12, 12, 1, 32)
    assert s["weights"] == "none (random init, seed 7)" and s["max_upload_bytes"] > 0
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for p in (
        "/api/search",
        "/api/images/{image_id}/similar",
        "/api/images/{image_id}",
        "/api/images/{image_id}/thumbnail",
        "/api/images",
        "/api/classify",
        "/api/classifiers",
        "/api/stats",
        "/api/health",
    ):
        assert p in paths, p
        for op in paths[p].values():
            assert op.get("summary"), (p, op)
    assert "multipart/form-data" in paths["/api/search"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_search_by_upload_matches_keras_and_brute_force(client, built):
    root, ix = built
    q = root / "queries" / "q0.png"
    r = client.post("/api/search?k=5", files=_upload(q))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = _keras_unit_vector(q)
    want_ids, want_scores = _brute_force(ix, ref, 5)
    got = body["results"]
    assert [h["id"] for h in got] == want_ids
    np.testing.assert_allclose([h["score"] for h in got], want_scores, atol=1e-4)
    assert [h["rank"] for h in got] == [1, 2, 3, 4, 5]
    recs = ix.store.images(want_ids)
    assert [h["path"] for h in got] == [recs[i].path for i in want_ids]
    assert all(h["thumbnail"] == f"/api/v1/images/{h['id']}/thumbnail" for h in got)


def test_search_by_upload_finds_the_same_image_first(client, built):
    root, ix = built
    path = root / "photos" / "a" / "img03.jpg"
    hits = client.post("/api/search?k=3", files=_upload(path, "x.jpg", "image/jpeg")).json()["results"]
    assert hits[0]["id"] == ix.store.image_by_path(str(path)).id
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_search_pages_join_up(client, built):
    root, _ = built
    q = root / "queries" / "q1.png"
    whole = client.post("/api/search?k=9", files=_upload(q)).json()
    first = client.post("/api/search?k=4", files=_upload(q)).json()
    second = client.post("/api/search?k=4&offset=4", files=_upload(q)).json()
    assert first["next"] == "/api/v1/search?k=4&offset=4"
    ids = [h["id"] for h in first["results"] + second["results"]]
    assert ids == [h["id"] for h in whole["results"][:8]]
    assert [h["rank"] for h in second["results"]] == [5, 6, 7, 8]
    last = client.post("/api/search?k=10&offset=8", files=_upload(q)).json()
    assert len(last["results"]) == 4 and last["next"] is None


def test_similar_by_id_matches_brute_force(client, built):
    _, ix = built
    image_id = int(ix.store.vector_ids()[4])
    body = client.get(f"/api/images/{image_id}/similar", params={"k": 6}).json()
    q = ix.store.vectors([image_id], dim=32)[1][0]
    want_ids, want_scores = _brute_force(ix, q, 6, exclude=[image_id])
    assert body["query_id"] == image_id
    assert [h["id"] for h in body["results"]] == want_ids
    np.testing.assert_allclose([h["score"] for h in body["results"]], want_scores, atol=1e-5)
    page2 = client.get(body["next"]).json()
    want2, _ = _brute_force(ix, q, 12, exclude=[image_id])
    assert [h["id"] for h in page2["results"]] == want2[6:]
    assert page2["next"] is None  # 11 neighbours exist, 6 + 5 shown


def test_image_metadata_with_labels_and_predictions(client, built):
    from vecsearch.store.models import ImagenetLabel

    root, ix = built
    path = root / "photos" / "b" / "img07.jpg"
    rec = ix.store.image_by_path(str(path))
    with ix.store.session() as s, s.begin():
        s.add_all(
            [
                ImagenetLabel(image_id=rec.id, rank=1, class_index=281, wnid="n02123045", name="tabby", prob=0.6),
                ImagenetLabel(image_id=rec.id, rank=2, class_index=285, wnid="n02124075", name="Egyptian_cat", prob=0.3),
            ]
        )
    ix.store.set_user_labels([(rec.id, "cats", "train", "folder")])
    ix.store.save_classifier_row("knn", "knn", None, "{}", "{}")
    ix.store.set_predictions("knn", [(rec.id, "cats", 0.75)])
    try:
        body = client.get(f"/api/images/{rec.id}").json()
        assert body["id"] == rec.id and body["path"] == str(path) and body["name"] == "img07.jpg"
        assert (body["width"], body["height"], body["status"], body["sha256"]) == (64, 48, "ok", rec.sha256)
        assert [(lab["name"], lab["prob"]) for lab in body["imagenet_labels"]] == [("tabby", 0.6), ("Egyptian_cat", 0.3)]
        assert body["user_label"] == {"label": "cats", "split": "train", "source": "folder"}
        assert body["predictions"] == [{"classifier": "knn", "label": "cats", "confidence": 0.75}]
        # ...and the grid of search results carries the ImageNet labels too.
        hits = client.post("/api/search?k=12", files=_upload(path, "x.jpg", "image/jpeg")).json()["results"]
        mine = next(h for h in hits if h["id"] == rec.id)
        assert [lab["name"] for lab in mine["imagenet_labels"]] == ["tabby", "Egyptian_cat"]
        assert all(h["imagenet_labels"] == [] for h in hits if h["id"] != rec.id)
    finally:
        from sqlalchemy import delete

        from vecsearch.store.models import Classifier

        with ix.store.session() as s, s.begin():
            s.execute(delete(ImagenetLabel))
            s.execute(delete(Classifier))
        ix.store.clear_user_labels()


def test_failed_image_metadata(client, built):
    _, ix = built
    (bad,) = ix.store.failed()
    body = client.get(f"/api/images/{bad.id}").json()
    assert body["status"] == "failed" and "corrupt" in body["reason"] and body["thumbnail"] is None
    _assert_json_error(client.get(f"/api/images/{bad.id}/similar"), 404)
    _assert_json_error(client.get(f"/api/images/{bad.id}/thumbnail"), 422)


def test_thumbnail_is_the_indexed_file_scaled(client, built):
    root, ix = built
    path = root / "photos" / "a" / "img02.jpg"
    rec = ix.store.image_by_path(str(path))
    r = client.get(f"/api/images/{rec.id}/thumbnail", params={"size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and thumb.size == (32, 24)  # 64x48 keeps its aspect
    ref = np.asarray(Image.open(path).convert("RGB").resize((32, 24), Image.BILINEAR), np.float32)
    assert np.abs(np.asarray(thumb.convert("RGB"), np.float32) - ref).mean() < 8
    other = ix.store.image_by_path(str(root / "photos" / "b" / "img09.jpg"))
    r2 = client.get(f"/api/images/{other.id}/thumbnail", params={"size": 32})
    assert np.abs(np.asarray(Image.open(io.BytesIO(r2.content)).convert("RGB"), np.float32) - ref).mean() > 8
    # Conditional GET: the browser's cache revalidates cheaply.
    again = client.get(f"/api/images/{rec.id}/thumbnail", params={"size": 32}, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert Image.open(io.BytesIO(client.get(f"/api/images/{rec.id}/thumbnail").content)).size == (64, 48)  # never upscaled


def test_thumbnail_revalidation_decodes_nothing(client, built, monkeypatch):
    from vecsearch import images

    root, ix = built
    rec = ix.store.image_by_path(str(root / "photos" / "a" / "img04.jpg"))
    etag = client.get(f"/api/images/{rec.id}/thumbnail", params={"size": 40}).headers["etag"]
    client.app.state.service.thumbnails.clear()

    def no_decoding(*args, **kwargs):
        raise AssertionError("a matching If-None-Match must not decode the file")

    monkeypatch.setattr(images, "thumbnail_jpeg", no_decoding)
    r = client.get(f"/api/images/{rec.id}/thumbnail", params={"size": 40}, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.headers["etag"] == etag and not r.content


def test_thumbnail_of_a_file_gone_since_indexing(built, tmp_path):
    from vecsearch import open_index
    from vecsearch.server import create_app

    make_image(tmp_path / "p" / "x.jpg", seed=1)
    ix = open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7)
    ix.add([tmp_path / "p"])
    (tmp_path / "p" / "x.jpg").unlink()
    with TestClient(create_app(ix), base_url="http://127.0.0.1") as c:
        _assert_json_error(c.get("/api/images/1/thumbnail"), 404)
    ix.close()


def test_image_list_pages_cover_every_image_once(client, built):
    _, ix = built
    seen, url = [], "/api/images?limit=5"
    while url:
        page = client.get(url).json()
        assert page["total"] == 13 and len(page["items"]) <= 5
        seen += [item["id"] for item in page["items"]]
        url = page["next"]
    assert seen == sorted(ix.store.images(range(1, 100)))
    failed = client.get("/api/images", params={"status": "failed"}).json()
    assert failed["total"] == 1 and failed["items"][0]["status"] == "failed"
    assert client.get("/api/images", params={"status": "ok", "limit": 500}).json()["total"] == 12


def test_classify_upload_with_a_saved_classifier(built, tmp_path):
    from vecsearch import open_index
    from vecsearch.server import create_app

    root, _ = built
    ix = open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7)
    ix.add([root / "photos"])
    with TestClient(create_app(ix), base_url="http://127.0.0.1") as c:
        q = root / "queries" / "q2.png"
        _assert_json_error(c.post("/api/classify", files=_upload(q)), 404)  # nothing trained yet
        ids = ix.store.vector_ids()
        recs = ix.store.images(ids)
        ix.store.set_user_labels([(i, "/a/" in recs[i].path and "alpha" or "beta", None, "folder") for i in ids])
        ix.train_classifier("knn", k=3)
        assert [row["name"] for row in c.get("/api/classifiers").json()["items"]] == ["knn"]
        r = c.post("/api/classify", files=_upload(q), params={"classifier": "knn", "top": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        want = ix.classify(q, name="knn", top=2)
        # One result shape for the API, the Python object and `classify IMG --json`; an upload has no path.
        assert body == want.to_dict() | {"path": None}
        assert set(body) == {"classifier", "kind", "label", "confidence", "top", "path"}
        assert body["classifier"] == "knn" and body["kind"] == "knn"
        assert sum(t["confidence"] for t in body["top"]) == pytest.approx(1.0, abs=1e-5)  # 2 classes, top 2
        cli = run_json("classify", q, "--name", "knn", "--index", tmp_path / "ix")
        assert cli == want.to_dict() | {"top": want.top[:3]}
        assert c.post("/api/classify", files=_upload(q)).json()["label"] == want.label  # default: newest
        _assert_json_error(c.post("/api/classify", files=_upload(q), params={"classifier": "nope"}), 404)
        _assert_json_error(c.post("/api/classify", files=_upload(b"not an image")), 422)
    ix.close()


def _ids(ix, root, *names) -> list[int]:
    return [ix.store.image_by_path(str(root / "photos" / n)).id for n in names]


def test_explain_by_id_is_the_png_of_the_index_objects_explanation(client, built):
    root, ix = built
    a, b = _ids(ix, root, "a/img00.jpg", "b/img07.jpg")
    r = client.get(f"/api/images/{a}/explain", params={"like": b})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    want = ix.explain(a, like=b, side=384)
    assert r.content == want.to_png()
    # The map explains the similarity search reports: the cosine of the stored vectors.
    cos = float(ix.vector(a) @ ix.vector(b))
    assert float(r.headers["x-explain-score"]) == pytest.approx(cos, rel=1e-4) and want.map.sum() == pytest.approx(cos, rel=1e-4)
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (384, 288)  # the 64 x 48 photo, longest side 384
    assert client.get(f"/api/images/{b}/explain", params={"like": a, "side": 100}).headers["x-explain-method"] == "cam"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/images/{image_id}/explain", "/api/explain"} <= set(paths)
    assert "post" in paths["/api/images/{image_id}/explain"] and "get" in paths["/api/images/{image_id}/explain"]


def test_explain_an_upload_both_ways(client, built):
    root, ix = built
    q = root / "queries" / "q1.png"
    (b,) = _ids(ix, root, "a/img03.jpg")
    upload_side = client.post("/api/explain", params={"like": b}, files=_upload(q))
    assert upload_side.status_code == 200, upload_side.text
    assert upload_side.content == ix.explain(q.read_bytes(), like=b, side=384).to_png()
    indexed_side = client.post(f"/api/images/{b}/explain", files=_upload(q))
    assert indexed_side.status_code == 200, indexed_side.text
    assert indexed_side.content == ix.explain(b, like=q, side=384).to_png()
    cos = float(ix.embed([q])[0] @ ix.vector(b))
    for r in (upload_side, indexed_side):
        assert r.headers["content-type"] == "image/png"
        assert float(r.headers["x-explain-score"]) == pytest.approx(cos, rel=1e-4)
    with Image.open(io.BytesIO(upload_side.content)) as im:
        assert im.size == (274, 384)  # the 50 x 70 upload


def test_explain_errors_are_json(client, built):
    root, ix = built
    (a,) = _ids(ix, root, "a/img00.jpg")
    q = root / "queries" / "q0.png"
    _assert_json_error(client.get("/api/images/999999/explain", params={"like": a}), 404)
    _assert_json_error(client.get(f"/api/images/{a}/explain", params={"like": 999999}), 404)
    _assert_json_error(client.post("/api/images/999999/explain", files=_upload(q)), 404)
    _assert_json_error(client.get(f"/api/images/{a}/explain", params={"like": 0}), 422)
    _assert_json_error(client.get(f"/api/images/{a}/explain", params={"like": a, "side": 5}), 422)
    _assert_json_error(client.get(f"/api/images/{a}/explain", params={"classifier": "nope"}), 404)
    body = _assert_json_error(client.get(f"/api/images/{a}/explain"), 400)  # the tiny backbone has no ImageNet top
    assert "ImageNet" in body["error"]
    _assert_json_error(client.get(f"/api/images/{a}/explain", params={"like": a, "class": "tench"}), 400)
    _assert_json_error(client.post("/api/explain", params={"like": a}, files=_upload(b"not an image")), 422)
    _assert_json_error(client.post(f"/api/images/{a}/explain", files=_upload(b"not an image")), 422)


def test_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for needle in ('id="file"', 'id="grid"', '"api/v1/search?"', "/similar", "/explain", "why similar"):
        assert needle in r.text
    assert '"/api' not in r.text  # relative addresses only: the page works under a root path


# -- hostile input ----------------------------------------------------------------------
def _jpeg(size=(256, 192), seed=3) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _real_bomb() -> bytes:
    """48 megapixels of black in ~50 KB: over the server's 40 MP cap, under the library's 120 MP default."""
    buf = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buf, "PNG")
    return buf.getvalue()


BAD_UPLOADS = {
    "text": (b"hello, I am not an image\n" * 10, "not an image"),
    "html": (b"<html><script>alert(1)</script></html>", "not an image"),
    "truncated_jpeg": (_jpeg()[:1500], "truncated"),
    "jpeg_header_only": (_jpeg()[:20], ""),
    "bomb_header": (png_header_only(100_000, 100_000), "too large"),
    "bomb_48mp": (None, "too large"),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_uploads_get_422(client, kind):
    data, words = BAD_UPLOADS[kind]
    if data is None:
        data = _real_bomb()
    body = _assert_json_error(client.post("/api/search", files=_upload(data, "evil.png")), 422)
    assert body["error"].startswith("Bad image:") and words in body["error"]
    assert "evil.png" not in body["error"]


def test_upload_over_the_cap_is_413(built):
    from vecsearch.server import create_app

    root, ix = built
    good = _jpeg((64, 64))
    with TestClient(create_app(ix, max_upload_bytes=len(good) + 10), base_url="http://127.0.0.1") as c:
        assert c.post("/api/search", files=_upload(good, "ok.jpg", "image/jpeg")).status_code == 200
        big = good + b"\0" * 100
        body = _assert_json_error(c.post("/api/search", files=_upload(big, "big.jpg", "image/jpeg")), 413)
        assert str(len(good) + 10) in body["error"]
        # A declared length far over the cap is refused before the body is read.
        huge = _assert_json_error(c.post("/api/search", files=_upload(good + b"\0" * 200_000, "huge.jpg")), 413)
        assert huge["type"] == "UploadTooLargeError"

        # Chunked (no Content-Length): refused once the stream passes the cap.
        def chunks():
            yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
            for _ in range(50):
                yield b"\0" * 10_000

        r = c.post("/api/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
        _assert_json_error(r, 413)
        _assert_json_error(c.post("/api/search", content=b"x", headers={"content-length": "abc"}), 400)


def test_upload_over_the_cap_over_real_http(built):
    """Through uvicorn's sockets the client still gets its 413, and the server keeps serving."""
    from vecsearch.server import create_app

    _, ix = built
    with live_server(create_app(ix, max_upload_bytes=10_000)) as base:
        r = httpx.post(f"{base}/api/search", files={"file": ("big.jpg", b"\0" * 3_000_000, "image/jpeg")}, timeout=60)
        assert _assert_json_error(r, 413)["error"] == "Upload too large: the cap is 10000 bytes a file, 640000 bytes a request."
        chunked = httpx.post(
            f"{base}/api/search",
            content=(b"\0" * 100_000 for _ in range(30)),
            timeout=60,
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        _assert_json_error(chunked, 413)
        assert httpx.get(f"{base}/api/health").json()["status"] == "ok"


def test_malformed_requests_are_4xx_json(client):
    _assert_json_error(client.post("/api/search"), 422)  # no file field
    _assert_json_error(client.post("/api/search", data={"k": "3"}), 422)
    _assert_json_error(client.post("/api/search", files=_upload(b"", "empty.png")), 422)
    _assert_json_error(
        client.post("/api/search", content=b"--nope\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=nope"}),
        (400, 422),
    )
    _assert_json_error(client.post("/api/search", json={"file": "x"}), 422)
    _assert_json_error(client.get("/api/search"), 405)
    _assert_json_error(client.get("/api/no-such-endpoint"), 404)


@pytest.mark.parametrize("k", ["0", "-1", "1001", "abc", "1.5", "", "99999999999999999999999"])
def test_bad_k_is_422(client, built, k):
    root, _ = built
    body = _assert_json_error(client.get("/api/images/1/similar", params={"k": k}), 422)
    assert body["error"].startswith("k:")
    _assert_json_error(client.post("/api/search", params={"k": k}, files=_upload(root / "queries" / "q0.png")), 422)


@pytest.mark.parametrize("bad_id", ["999999", "0", "-3", "abc", "1.5", str(2**63), str(2**70), "9223372036854775807"])
def test_unknown_or_bad_ids(client, bad_id):
    for url in (f"/api/images/{bad_id}", f"/api/images/{bad_id}/similar", f"/api/images/{bad_id}/thumbnail"):
        r = client.get(url)
        _assert_json_error(r, 404 if bad_id in ("999999", "9223372036854775807") else 422)


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail",
        "/api/images/%2Fetc%2Fpasswd/thumbnail",
        "/api/images/1/../../../../etc/passwd",
        "/api/thumbnail?path=/etc/passwd",
        "/api/images/thumbnail?path=/etc/passwd",
        "/../../../../etc/passwd",
        "/static/../../etc/passwd",
        "/api/images/1%00/thumbnail",
    ],
)
def test_paths_cannot_escape(client, url):
    r = client.get(url)
    assert 400 <= r.status_code < 500, (url, r.status_code)
    assert b"root:" not in r.content
    if r.headers["content-type"].startswith("application/json"):
        assert "error" in r.json()


def test_thumbnail_refuses_a_client_given_path(client, built):
    root, ix = built
    rec = ix.store.image_by_path(str(root / "photos" / "a" / "img00.jpg"))
    assert client.get(f"/api/images/{rec.id}/thumbnail").status_code == 200
    r = client.get(f"/api/images/{rec.id}/thumbnail", params={"path": "/etc/passwd"})
    assert _assert_json_error(r, 422) and b"root:" not in r.content


def test_bad_thumbnail_sizes(client):
    for size in ("0", "8", "5000", "big"):
        _assert_json_error(client.get("/api/images/1/thumbnail", params={"size": size}), 422)


# -- the token -------------------------------------------------------------------------------
def test_token_guards_everything_but_health_and_page(built):
    from vecsearch.server import create_app

    root, ix = built
    with TestClient(create_app(ix, token="s3cret"), base_url="http://127.0.0.1") as c:
        assert c.get("/api/health").json()["auth"] is True
        assert c.get("/").status_code == 200
        for method, url, kw in [
            ("get", "/api/stats", {}),
            ("get", "/api/images/1", {}),
            ("get", "/api/images/1/similar", {}),
            ("get", "/api/images/1/thumbnail", {}),
            ("get", "/api/images", {}),
            ("get", "/api/classifiers", {}),
            ("post", "/api/search", {"files": _upload(root / "queries" / "q0.png")}),
            ("get", "/api/images/1/explain?like=2", {}),
            ("post", "/api/explain?like=2", {"files": _upload(root / "queries" / "q0.png")}),
            ("post", "/api/images/1/explain", {"files": _upload(root / "queries" / "q0.png")}),
        ]:
            r = getattr(c, method)(url, **kw)
            _assert_json_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            _assert_json_error(getattr(c, method)(url, headers={"Authorization": "Bearer wrong"}, **kw), 401)
            assert getattr(c, method)(url, headers={"Authorization": "Bearer s3cret"}, **kw).status_code == 200, url
        assert c.get("/api/images/1/thumbnail?token=s3cret").status_code == 200  # for <img src>
        assert c.get("/api/images/1/explain?like=2&token=s3cret").status_code == 200
        _assert_json_error(c.get("/api/images/1/thumbnail?token=s3cre"), 401)


def test_a_non_ascii_token_works_in_the_header_and_the_url(built):
    from vecsearch.server import create_app

    _, ix = built
    with TestClient(create_app(ix, token="pässwörd", warm=False), base_url="http://127.0.0.1") as c:
        assert c.get("/api/stats", headers={"Authorization": "Bearer pässwörd".encode()}).status_code == 200
        assert c.get("/api/stats", params={"token": "pässwörd"}).status_code == 200
        _assert_json_error(c.get("/api/stats", headers={"Authorization": "Bearer passwort".encode()}), 401)
        _assert_json_error(c.get("/api/stats", params={"token": "%ff"}), 401)


# -- the command ---------------------------------------------------------------------------
def test_serve_refuses_a_public_host_without_a_token(built):
    from typer.testing import CliRunner

    from vecsearch.cli import app

    _, ix = built
    r = CliRunner().invoke(app, ["serve", "--index", str(ix.directory), "--host", "0.0.0.0"], env={"VECSEARCH_TOKEN": ""})
    assert r.exit_code == 1 and "without a token" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["serve", "--index", str(ix.directory / "nope")])
    assert r.exit_code == 1 and "No index" in r.output
    r = CliRunner().invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "--token" in r.output and "--max-upload-mb" in r.output


@pytest.mark.slow
def test_serve_command_serves_over_http(built):
    """The real command in a subprocess: starts, answers, stops on SIGTERM."""
    _, ix = built
    proc, port = start_serve(ix.directory)
    try:
        r = wait_until_serving(proc, port)
        assert r.json()["vectors"] == 12
        assert httpx.get(f"http://127.0.0.1:{port}/api/images/1/similar?k=2").json()["results"]
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in stderr


# -- concurrency with an indexer in another process -----------------------------------------
def _index_in_subprocess(root: Path, index: Path) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; "
        "app(['index', %r, '--index', %r, '--batch-size', '4', '--quiet'])" % (str(TESTS), str(root), str(index))
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "TINY_BACKBONE_DELAY": "0.05"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_readers_see_a_consistent_index_while_another_process_indexes(tmp_path):
    from vecsearch import open_index
    from vecsearch.server import create_app

    for i in range(12):
        make_image(tmp_path / "old" / f"o{i:02d}.jpg", seed=i)
    for i in range(12):
        make_image(tmp_path / "new" / f"n{i:02d}.jpg", seed=200 + i)
    ix = open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7)
    ix.add([tmp_path / "old"])
    query = (tmp_path / "new" / "n05.jpg").read_bytes()
    probe = ix.store.image_by_path(str(tmp_path / "old" / "o02.jpg")).id
    old_names = {f"o{i:02d}.jpg" for i in range(12)}
    new_names = [f"n{i:02d}.jpg" for i in range(12)]  # the indexer embeds and commits in this order
    seen_sizes: set[int] = set()
    problems: list[str] = []
    stop = threading.Event()

    def reader(base: str, kind: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                if kind == "similar":
                    r = c.get(f"/api/images/{probe}/similar", params={"k": 50})
                    expected_old = old_names - {"o02.jpg"}  # itself left out
                else:
                    r = c.post("/api/search", params={"k": 50}, files={"file": ("q.jpg", query, "image/jpeg")})
                    expected_old = old_names
                if r.status_code != 200:
                    problems.append(f"{kind}: {r.status_code} {r.text[:200]}")
                    continue
                hits = r.json()["results"]
                scores = [h["score"] for h in hits]
                if scores != sorted(scores, reverse=True):
                    problems.append(f"{kind}: unsorted {scores}")
                names = [h["name"] for h in hits]
                got_new = sorted(set(names) - old_names)
                # A committed state: every old image, and the new ones of whole committed chunks.
                if (
                    len(names) != len(set(names))
                    or set(names) & old_names != expected_old
                    or got_new != new_names[: len(got_new)]
                ):
                    problems.append(f"{kind}: inconsistent {names}")
                seen_sizes.add(len(got_new))

    with live_server(create_app(ix)) as base:
        threads = [threading.Thread(target=reader, args=(base, kind)) for kind in ("similar", "search", "similar")]
        for t in threads:
            t.start()
        proc = _index_in_subprocess(tmp_path / "new", tmp_path / "ix")
        try:
            _, err = proc.communicate(timeout=300)
            deadline = time.monotonic() + 20
            while 12 not in seen_sizes and not problems and time.monotonic() < deadline:
                time.sleep(0.05)  # readers pick up the new state on their next request
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert not problems, problems[:5]
        # Every answer saw a committed state (the indexer commits in chunks), never a half-written one.
        assert 0 in seen_sizes and 12 in seen_sizes, seen_sizes
        after = httpx.get(f"{base}/api/health").json()
        assert after["vectors"] == 24
        hits = httpx.post(f"{base}/api/search", params={"k": 1}, files={"file": ("q.jpg", query, "image/jpeg")}).json()["results"]
        new_id = ix.store.image_by_path(str(tmp_path / "new" / "n05.jpg")).id
        assert hits[0]["id"] == new_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    ix.close()


def test_server_side_faults_are_503_not_client_errors():
    from vecsearch.errors import IndexCorruptError, IndexMismatchError, WeightsUnavailableError
    from vecsearch.server.errors import status_for

    for e in (IndexCorruptError("x"), IndexMismatchError("x"), WeightsUnavailableError("x")):
        assert status_for(e) == 503


# -- issue 11: FIFOs, thumbnail memory, the Host check, documented statuses ---------------------------
def _unblock_fifo(path: Path) -> None:
    """Release readers stuck opening a FIFO (a server that waits on it): a writer opens and closes."""
    for _ in range(64):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            return
        time.sleep(0.01)


def test_thumbnails_of_a_fifo_fail_at_once_and_the_server_keeps_answering(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from vecsearch import open_index
    from vecsearch.server import create_app

    for i in range(3):
        make_image(tmp_path / "p" / f"img{i}.jpg", seed=i)
    ix = open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7)
    ix.add([tmp_path / "p"])
    victim = tmp_path / "p" / "img1.jpg"
    vid = ix.store.image_by_path(str(victim)).id
    victim.unlink()
    os.mkfifo(victim)
    try:
        with live_server(create_app(ix, warm=False)) as base:

            def thumb(_):
                try:
                    return httpx.get(f"{base}/api/images/{vid}/thumbnail", timeout=10).status_code
                except httpx.TimeoutException:
                    return "timeout"

            with ThreadPoolExecutor(24) as pool:  # more than the server's threads
                codes = list(pool.map(thumb, range(24)))
            assert codes == [422] * 24
            body = httpx.get(f"{base}/api/images/{vid}/thumbnail", timeout=10).json()
            assert "FIFO" in body["error"]
            assert httpx.get(f"{base}/api/health", timeout=5).status_code == 200
    finally:
        _unblock_fifo(victim)
        ix.close()


_SERVE = (
    "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; "
    "app(['serve', '--index', %r, '--port', %r, '--log-level', 'warning', '--max-pixels', %r])"
)


def _rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc")
@pytest.mark.parametrize("max_pixels", [None, 200_000_000])
def test_concurrent_thumbnails_of_a_huge_png_stay_within_a_gigabyte(tmp_path, max_pixels):
    """Default cap: refused from the header. A cap raised past it: decoded once, in strips."""
    from concurrent.futures import ThreadPoolExecutor

    from helpers import big_png

    from vecsearch import open_index

    big = big_png(tmp_path / "p" / "big.png", 11000, 10000)
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "p"])
        big_id = ix.store.image_by_path(str(big)).id
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cap = str(max_pixels or 40_000_000)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE % (str(TESTS), str(tmp_path / "index"), str(port), cap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(proc, port)
        idle = _rss(proc.pid, "VmRSS")
        try:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak to now
        except OSError:
            pass
        with ThreadPoolExecutor(4) as pool:
            codes = list(
                pool.map(
                    lambda _: httpx.get(f"http://127.0.0.1:{port}/api/images/{big_id}/thumbnail", timeout=120).status_code,
                    range(4),
                )
            )
        peak = _rss(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert codes == ([422] * 4 if max_pixels is None else [200] * 4)
    print(
        f"server idle RSS {idle / 2**20:.0f} MiB, peak with 4 thumbnail requests {peak / 2**20:.0f} MiB "
        f"(+{(peak - idle) / 2**20:.0f} MiB)"
    )
    assert peak - idle < 2**30


def test_host_header_must_name_this_server(built):
    from vecsearch.server import create_app
    from vecsearch.server.guards import allowed_hosts

    _, ix = built
    app = create_app(ix, warm=False)
    for base in ("http://127.0.0.1", "http://localhost:8000", "http://[::1]:8000"):
        with TestClient(app, base_url=base) as c:
            assert c.get("/api/health").status_code == 200, base
    for base in ("http://evil.example", "http://evil.example:8000", "http://127.0.0.1.evil.example", "http://10.0.0.7"):
        with TestClient(app, base_url=base) as c:
            for url in ("/api/health", "/api/images/1", "/api/images/1/thumbnail", "/"):
                _assert_json_error(c.get(url), 400)
    with TestClient(create_app(ix, warm=False, allow_hosts=["photos.lan"]), base_url="http://photos.lan:8000") as c:
        assert c.get("/api/images/1").status_code == 200
    wide = create_app(ix, warm=False, host="0.0.0.0", token="t")
    with TestClient(wide, base_url="http://192.168.1.20:8000") as c:
        assert c.get("/api/health").status_code == 200
    with TestClient(wide, base_url="http://rebind.example:8000") as c:
        _assert_json_error(c.get("/api/health"), 400)
    assert allowed_hosts("127.0.0.1") == (frozenset({"127.0.0.1", "localhost", "::1"}), False)
    assert allowed_hosts("::", ["Photos.LAN."]) == (frozenset({"::", "127.0.0.1", "localhost", "::1", "photos.lan"}), True)


def test_host_check_over_real_http(built):
    from vecsearch.server import create_app

    _, ix = built
    with live_server(create_app(ix, warm=False)) as base:
        assert httpx.get(f"{base}/api/health").status_code == 200
        r = httpx.get(f"{base}/api/images/1", headers={"Host": "attacker.example"})
        assert r.status_code == 400 and "attacker.example" in r.json()["error"]


def test_serve_allow_host_flag(built):
    from typer.testing import CliRunner

    from vecsearch.cli import app

    r = CliRunner().invoke(app, ["serve", "--help"])
    assert "--allow-host" in r.output


def test_openapi_declares_every_status_the_api_returns(client):
    spec = client.get("/openapi.json").json()
    declared = {
        (path, method): set(map(int, op["responses"])) for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    for key, codes in declared.items():
        assert {200, 400, 503} <= codes, key
        assert 500 not in codes
    assert {401, 413, 422} <= declared[("/api/search", "post")]
    assert {401, 404, 413, 422} <= declared[("/api/classify", "post")]
    assert {304, 401, 404, 422} <= declared[("/api/images/{image_id}/thumbnail", "get")]
    assert {401, 404, 422} <= declared[("/api/images/{image_id}", "get")]
    err = spec["paths"]["/api/images/{image_id}"]["get"]["responses"]["404"]["content"]["application/json"]["schema"]
    assert err == {"$ref": "#/components/schemas/ErrorBody"}
    # what the API really answers, each declared for the route that answered it
    seen = {
        ("/api/images/{image_id}", "get"): client.get("/api/images/999999").status_code,
        ("/api/images/{image_id}/thumbnail", "get"): client.get("/api/images/1/thumbnail?size=3").status_code,
        ("/api/search", "post"): client.post("/api/search", files=_upload(b"not an image")).status_code,
    }
    for key, code in seen.items():
        assert code in declared[key], (key, code)


def test_an_unknown_query_parameter_is_a_422_not_ignored(client):
    """A misspelt filter would widen a search silently: every API route refuses what it does not declare."""
    assert client.get("/api/v1/images", params={"limit": 2}).status_code == 200
    r = client.get("/api/v1/images", params={"limit": 2, "lable": "cat"})
    body = _assert_json_error(r, 422)
    assert "lable" in body["error"] and "limit" in body["error"]
    assert client.get("/api/v1/images/1/similar", params={"undr": "/x"}).status_code == 422
    assert client.get("/api/images/1/similar", params={"undr": "/x"}).status_code == 422
    assert client.post("/api/v1/search", params={"kk": 3}, files=_upload(b"x")).status_code == 422
    # The token as a query parameter is always allowed; the page keeps its own state in its address.
    assert client.get("/api/v1/images", params={"token": "t"}).status_code == 200
    assert client.get("/", params={"similar": 3, "under": "/x"}).status_code == 200
