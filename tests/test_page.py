"""The HTTP service as the page uses it: offline docs, originals by id, filters, labels on results, the token URL.

References are independent of the server: the files' own bytes, the labels CSV the test wrote,
NumPy brute-force cosine over the stored vectors (for filters and for a 1-NN classifier's
predictions), and the HTML the server sends.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from helpers import PAGE_TAUGHT, make_image, start_serve, wait_until_serving  # noqa: E402

TESTS = Path(__file__).parent
TAUGHT = PAGE_TAUGHT


@pytest.fixture(scope="module")
def built(labelled_served_index):
    """conftest's labelled_served_index: 12 JPEGs in a/ and b/, a PNG in c/, a corrupt file; 6 taught
    labels (TAUGHT) and a 1-NN classifier's predictions. Shared read-only."""
    return labelled_served_index


@pytest.fixture(scope="module")
def client(built):
    from vecsearch.server import create_app

    _, ix = built
    with TestClient(create_app(ix, warm=False), base_url="http://127.0.0.1") as c:
        yield c


def _ids_by_path(ix) -> dict[str, int]:
    _, rows = ix.images(0, 100)
    return {r.path: r.id for r in rows}


def _vectors(ix) -> tuple[np.ndarray, np.ndarray]:
    ids, mat, _ = ix.store.vectors(dim=ix.info.dim)
    return np.asarray(ids), mat.astype(np.float64)


def _brute_force(ix, query_id: int, k: int, keep=lambda i, s: True) -> list[int]:
    """Ids nearest image `query_id` (itself left out), best first, keeping only those `keep` accepts."""
    ids, mat = _vectors(ix)
    q = mat[list(ids).index(query_id)]
    scores = mat @ q
    order = np.lexsort((ids, -scores))
    return [int(ids[j]) for j in order if ids[j] != query_id and keep(int(ids[j]), float(scores[j]))][:k]


def _nearest_taught_label(ix, root: Path) -> dict[int, str]:
    """The reference 1-NN prediction of every untaught image: the label of its nearest taught image."""
    by_path = _ids_by_path(ix)
    taught = {by_path[str(root / "photos" / p)]: label for p, label in TAUGHT.items()}
    ids, mat = _vectors(ix)
    row = {int(i): n for n, i in enumerate(ids)}
    t_ids = sorted(taught)
    out = {}
    for i in ids:
        if int(i) in taught:
            continue
        sims = mat[[row[t] for t in t_ids]] @ mat[row[int(i)]]
        out[int(i)] = taught[t_ids[int(np.argmax(sims))]]
    return out


# -- /docs and /redoc offline ---------------------------------------------------------------
@pytest.mark.parametrize("page, script", [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_docs_pages_reference_no_external_host_and_their_files_are_served(client, page, script):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # Nothing the browser would fetch from elsewhere: no absolute URL at all, not even in a comment.
    assert re.findall(r"(?i)(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html) == []
    refs = set(re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html))
    refs |= set(re.findall(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""", html))
    assert any(u.endswith(script) for u in refs), refs
    assert "/openapi.json" in refs
    kinds = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
    for url in refs:
        assert url.startswith("/"), url
        got = client.get(url)
        assert got.status_code == 200, url
        assert kinds[Path(url).suffix] in got.headers["content-type"], (url, got.headers["content-type"])
        if url.endswith(script):
            assert len(got.content) > 500_000  # the whole bundle, not a stub


def test_swagger_ui_is_version_5_which_reads_openapi_3_1(client):
    # Swagger UI 4 (the `swagger-ui-bundle` wheel) shows "does not specify a valid version field" for 3.1.
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    js = client.get("/static/docs/swagger-ui-bundle.js").text
    # OpenAPI 3.1 support is what Swagger UI 5 added; it then knows the `openapi: 3.1.x` version field.
    assert "OpenAPI 3.1" in js or "isOAS31" in js


# -- what results carry ---------------------------------------------------------------------
def test_results_carry_folder_taught_label_predictions_and_original(client, built):
    root, ix = built
    by_path = _ids_by_path(ix)
    predicted = _nearest_taught_label(ix, root)
    first = by_path[str(root / "photos" / "a" / "img03.jpg")]
    body = client.get(f"/api/images/{first}/similar", params={"k": 20}).json()
    assert len(body["results"]) == 12  # 13 ok images, the query left out
    for hit in body["results"]:
        path = Path(hit["path"])
        assert hit["folder"] == str(path.parent) and hit["name"] == path.name
        rel = path.relative_to(root / "photos").as_posix()
        want_label = TAUGHT.get(rel)
        assert (hit["user_label"] or {}).get("label") == want_label, rel
        if want_label is None:
            assert [(p["classifier"], p["label"]) for p in hit["predictions"]] == [("nn1", predicted[hit["id"]])]
            assert 0 < hit["predictions"][0]["confidence"] <= 1
        else:
            assert hit["predictions"] == []  # taught images are not predicted
        assert hit["original"] == f"/api/v1/images/{hit['id']}/original"
    # The image record and the listing say the same.
    one = body["results"][0]
    rec = client.get(f"/api/images/{one['id']}").json()
    assert (rec["folder"], rec["user_label"], rec["predictions"], rec["original"]) == (
        one["folder"],
        one["user_label"],
        one["predictions"],
        one["original"],
    )
    listed = {i["id"]: i for i in client.get("/api/images", params={"limit": 100}).json()["items"]}
    assert listed[one["id"]]["folder"] == one["folder"] and listed[one["id"]]["predictions"] == one["predictions"]
    assert client.get("/api/stats").json()["labels"] == ["cat", "dog"]  # the page's suggestions for the filters
    broken = listed[by_path[str(root / "photos" / "b" / "broken.jpg")]]
    assert broken["status"] == "failed" and broken["original"] is None


# -- originals, by id only --------------------------------------------------------------------
def test_original_serves_the_indexed_files_bytes_with_their_type(client, built):
    root, ix = built
    by_path = _ids_by_path(ix)
    for rel, mime in [("a/img00.jpg", "image/jpeg"), ("c/plain.png", "image/png")]:
        path = root / "photos" / rel
        r = client.get(f"/api/images/{by_path[str(path)]}/original")
        assert r.status_code == 200, r.text
        assert r.content == path.read_bytes()
        assert r.headers["content-type"] == mime
        assert int(r.headers["content-length"]) == path.stat().st_size
        assert r.headers["x-content-type-options"] == "nosniff" and "sandbox" in r.headers["content-security-policy"]
        assert path.name in r.headers["content-disposition"]
        again = client.get(f"/api/images/{by_path[str(path)]}/original", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_original_refuses_unknown_ids_failed_files_and_paths(client, built):
    root, ix = built
    by_path = _ids_by_path(ix)
    secret = b"root:x:0:0"
    for url, status in [
        ("/api/images/999999/original", 404),
        (f"/api/images/{by_path[str(root / 'photos' / 'b' / 'broken.jpg')]}/original", 404),
        ("/api/images/0/original", 422),
        ("/api/images/-1/original", 422),
        ("/api/images/..%2F..%2F..%2Fetc%2Fpasswd/original", (404, 422)),
        ("/api/images/1%2F..%2F..%2Fetc%2Fpasswd/original", (404, 422)),
        ("/api/images/%2Fetc%2Fpasswd/original", (404, 422)),
    ]:
        r = client.get(url)
        assert r.status_code in (status if isinstance(status, tuple) else (status,)), (url, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json") and secret not in r.content
    # A path in the query string is refused: the id alone names the file.
    first = by_path[str(root / "photos" / "a" / "img00.jpg")]
    r = client.get(f"/api/images/{first}/original", params={"path": "/etc/passwd"})
    assert r.status_code == 422 and secret not in r.content


def test_original_refuses_a_file_changed_since_indexing(tmp_path):
    """A repointed link or a replaced file is not what was indexed: 404, and its bytes never leave."""
    from vecsearch import open_index
    from vecsearch.server import create_app

    photo = make_image(tmp_path / "photos" / "x.jpg", seed=3)
    make_image(tmp_path / "photos" / "y.jpg", seed=4)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET " * 100)
    original = photo.read_bytes()
    st = photo.stat()
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])
        image_id = _ids_by_path(ix)[str(photo)]
        with TestClient(create_app(ix, warm=False), base_url="http://127.0.0.1") as c:
            url = f"/api/images/{image_id}/original"
            assert c.get(url).content == original
            photo.unlink()
            r = c.get(url)
            assert r.status_code == 404 and "cannot be read" in r.json()["error"]
            photo.symlink_to(secret)  # same name, someone else's file behind it
            os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            r = c.get(url)
            assert r.status_code == 404 and b"SECRET" not in r.content and "changed since" in r.json()["error"]
            photo.unlink()
            photo.write_bytes(original[:-10] + b"\x00" * 10)  # same size, other bytes, new mtime
            assert c.get(url).status_code == 404
            photo.write_bytes(original)
            os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
            assert c.get(url).content == original  # the indexed file again


def test_a_text_file_with_the_recorded_size_and_mtime_is_not_served(tmp_path):
    """The type comes from the bytes (Pillow), never the name: a non-image is refused even if it matches."""
    from vecsearch import open_index
    from vecsearch.server import create_app

    photo = make_image(tmp_path / "photos" / "x.jpg", seed=3)
    make_image(tmp_path / "photos" / "y.jpg", seed=4)
    st = photo.stat()
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])
        image_id = _ids_by_path(ix)[str(photo)]
        photo.write_bytes(b"<script>alert(1)</script>".ljust(st.st_size, b" "))
        os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns))
        with TestClient(create_app(ix, warm=False), base_url="http://127.0.0.1") as c:
            r = c.get(f"/api/images/{image_id}/original")
            assert r.status_code == 404 and b"<script>" not in r.content


# -- filters ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params",
    [
        {"min_score": "1.5"},
        {"min_score": "-1.01"},
        {"min_score": "nan"},
        {"min_score": "inf"},
        {"min_score": "high"},
        {"label": ""},
        {"label": "x" * 201},
        {"predicted": "a\nb"},
        {"under": "/tmp/\x00"},
        {"under": "x" * 4097},
    ],
)
def test_bad_filter_values_are_422(client, built, params):
    root, _ = built
    r = client.get("/api/images/1/similar", params=params)
    assert r.status_code == 422 and r.json()["error"], r.text
    files = {"file": ("q.png", (root / "photos" / "c" / "plain.png").read_bytes(), "image/png")}
    r = client.post("/api/search", params=params, files=files)
    assert r.status_code == 422 and r.json()["error"], r.text


def test_filters_keep_exactly_the_images_that_pass(client, built):
    root, ix = built
    by_path = _ids_by_path(ix)
    path_of = {i: p for p, i in by_path.items()}
    taught = {by_path[str(root / "photos" / p)]: label for p, label in TAUGHT.items()}
    predicted = _nearest_taught_label(ix, root)
    q = by_path[str(root / "photos" / "b" / "img09.jpg")]
    folder_a = str(root / "photos" / "a")
    cases = [
        ({"under": folder_a}, lambda i, s: path_of[i].startswith(folder_a + os.sep)),
        ({"label": "cat"}, lambda i, s: taught.get(i) == "cat"),
        ({"predicted": "dog"}, lambda i, s: predicted.get(i) == "dog"),
        ({"min_score": 0.5}, lambda i, s: s >= 0.5),
        (
            {"under": folder_a, "predicted": "cat"},
            lambda i, s: path_of[i].startswith(folder_a + os.sep) and predicted.get(i) == "cat",
        ),
        ({"predicted": "dog", "classifier": "nn1", "min_score": 0.2}, lambda i, s: predicted.get(i) == "dog" and s >= 0.2),
    ]
    for params, keep in cases:
        want = _brute_force(ix, q, 20, keep)
        body = client.get(f"/api/images/{q}/similar", params={"k": 20, **params}).json()
        assert [h["id"] for h in body["results"]] == want, params
        assert [h["rank"] for h in body["results"]] == list(range(1, len(want) + 1))
    # A class nobody was taught, or predictions of a classifier that does not exist, say so.
    r = client.get(f"/api/images/{q}/similar", params={"label": "nobody"})
    assert r.status_code == 400 and "'cat', 'dog'" in r.json()["error"]
    r = client.get(f"/api/images/{q}/similar", params={"predicted": "dog", "classifier": "nope"})
    assert r.status_code == 404 and r.json()["error"]
    r = client.get(f"/api/images/{q}/similar", params={"classifier": "nn1"})
    assert r.status_code == 400 and "predicted" in r.json()["error"]
    # Paging keeps the filters: the next link carries them, and page 2 continues page 1.
    want = _brute_force(ix, q, 20, lambda i, s: s >= -0.5)
    page1 = client.get(f"/api/images/{q}/similar", params={"k": 2, "min_score": -0.5}).json()
    assert "min_score=-0.5" in page1["next"]
    page2 = client.get(page1["next"]).json()
    assert [h["id"] for h in page1["results"] + page2["results"]] == want[:4]
    # An upload search takes the same filters.
    files = {"file": ("q.jpg", Path(path_of[q]).read_bytes(), "image/jpeg")}
    hits = client.post("/api/search", params={"k": 20, "under": folder_a}, files=files).json()["results"]
    assert hits and all(h["folder"] == folder_a for h in hits)
    assert [h["id"] for h in hits] == _brute_force(ix, q, 20, cases[0][1])


# -- the token URL ------------------------------------------------------------------------------
def test_the_page_loads_without_a_token_and_401_tells_a_browser_to_open_the_token_url(built):
    from vecsearch.server import create_app

    _, ix = built
    with TestClient(create_app(ix, token="s3cret", warm=False), base_url="http://127.0.0.1") as c:
        page = c.get("/")
        assert page.status_code == 200 and "<title>vecsearch</title>" in page.text
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert c.get("/?token=s3cret").status_code == 200
        browser = c.get("/api/stats", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 401
        assert "/?token=" in browser.json()["error"] and "Authorization" not in browser.json()["error"]
        from_page = c.get("/api/stats", headers={"X-Vecsearch-Page": "1"})
        assert from_page.status_code == 401 and "/?token=" in from_page.json()["error"]
        program = c.get("/api/stats")
        assert program.status_code == 401 and "Authorization: Bearer TOKEN" in program.json()["error"]
        assert c.get("/api/images/1/original?token=s3cret").status_code == 200
        assert c.get("/api/images/1/original").status_code == 401


def test_openapi_declares_the_bearer_token_so_docs_can_authorize(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's read token or admin token (only when it has one).",
    }
    ops = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert ops[("/api/images/{image_id}/original", "get")]["security"] == [{"HTTPBearer": []}]
    assert ops[("/api/search", "post")]["security"] == [{"HTTPBearer": []}]
    assert "security" not in ops[("/api/health", "get")]


def test_page_url_is_what_a_browser_can_open():
    from vecsearch.cli.serve import page_url

    assert page_url("127.0.0.1", 8000, None) == "http://127.0.0.1:8000/"
    assert page_url("0.0.0.0", 8000, "a b/&=?") == "http://127.0.0.1:8000/?token=a%20b%2F%26%3D%3F"
    assert page_url("::1", 80, "t") == "http://[::1]:80/?token=t"
    assert page_url("::", 80, None) == "http://127.0.0.1:80/"
    assert page_url("photos.local", 9000, "t") == "http://photos.local:9000/?token=t"


@pytest.mark.slow
def test_serve_prints_the_token_url_and_it_opens_the_page(built):
    _, ix = built
    proc, port = start_serve(ix.directory, env={"VECSEARCH_TOKEN": "tok/en 1"})
    try:
        wait_until_serving(proc, port)
        url = f"http://127.0.0.1:{port}/?token=tok%2Fen%201"
        assert httpx.get(url).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/api/stats", params={"token": "tok/en 1"}).status_code == 200
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert url in stderr


def test_serve_without_the_docs_package_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['fastapi_offline'] = None; from vecsearch.cli import app; "
        "app(['serve', '--index', %r])" % str(tmp_path / "index")
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    # (After the `out` branch: EXTRAS["server"] in vecsearch/extras.py must list fastapi_offline.)
    from vecsearch.extras import install_line

    assert "fastapi_offline" in r.stderr and install_line("server") in r.stderr
