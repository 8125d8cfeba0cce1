"""Embeddings out and vectors in over HTTP: POST /api/v1/embed (JSON and .npy), POST /api/v1/search/vector,
and POST /api/v1/search with several files, against a real server (uvicorn on a loopback socket)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from helpers import live_server, start_serve, wait_until_serving  # noqa: E402

V1 = "/api/v1"


@pytest.fixture(scope="module")
def served(served_index):
    """(root, ix, base URL): conftest's served index behind a live server."""
    from vecsearch.server import create_app

    root, ix = served_index
    with live_server(create_app(ix)) as base:
        yield root, ix, base


def _files(*paths_or_bytes, names=None):
    out = []
    for n, item in enumerate(paths_or_bytes):
        data = item if isinstance(item, bytes) else item.read_bytes()
        name = names[n] if names else (f"f{n}.png" if isinstance(item, bytes) else item.name)
        out.append(("file", (name, data, "application/octet-stream")))
    return out


def _brute(ix, q: np.ndarray, k: int, ids_allowed=None) -> list[int]:
    ids, mat, _ = ix.store.vectors(dim=ix.info.dim)
    scores = mat.astype(np.float64) @ (q.astype(np.float64) / np.linalg.norm(q))
    if ids_allowed is not None:
        keep = np.isin(ids, list(ids_allowed))
        ids, scores = ids[keep], scores[keep]
    return ids[np.lexsort((ids, -scores))[:k]].tolist()


def test_embed_returns_the_index_embeddings_and_per_file_failures(served):
    root, ix, base = served
    queries = sorted((root / "queries").glob("*.png"))
    r = httpx.post(f"{base}{V1}/embed", files=_files(queries[0], b"not an image", b"", queries[1]), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "backbone": "tiny",
        "weights_kind": ix.info.weights_kind,
        "weights_fingerprint": ix.info.weights_fingerprint,
        "dim": 32,
        "precision": "float32",
    }
    assert (body["embedded"], body["failed"]) == (2, 2)
    names = [i["name"] for i in body["items"]]
    assert names == [queries[0].name, "f1.png", "f2.png", queries[1].name]
    assert "vector" not in body["items"][1] and body["items"][1]["error"].startswith("Bad image: ")
    assert "empty" in body["items"][2]["error"]
    for item, path in ((body["items"][0], queries[0]), (body["items"][3], queries[1])):
        got = np.asarray(item["vector"], np.float32)
        want = ix.embed_bytes(path.read_bytes())
        assert got.shape == (32,) and float(got @ want) >= 0.9999
        assert abs(float(np.linalg.norm(got)) - 1) < 1e-5


def test_embed_as_npy_equals_the_json(served):
    root, ix, base = served
    queries = sorted((root / "queries").glob("*.png"))
    files = _files(queries[0], b"junk", queries[2])
    as_json = httpx.post(f"{base}{V1}/embed", files=files, timeout=60).json()
    for r in (
        httpx.post(f"{base}{V1}/embed", params={"format": "npy"}, files=files, timeout=60),
        httpx.post(f"{base}{V1}/embed", headers={"Accept": "application/x-npy"}, files=files, timeout=60),
    ):
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
        arr = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert arr.dtype == np.float32 and arr.shape == (2, 32)
        assert r.headers["x-vecsearch-rows"] == "0,2" and r.headers["x-vecsearch-failed"] == "1"
        assert r.headers["x-vecsearch-dim"] == "32" and r.headers["x-vecsearch-backbone"] == "tiny"
        np.testing.assert_array_equal(arr, np.asarray([as_json["items"][0]["vector"], as_json["items"][2]["vector"]], np.float32))
    # format=json wins over the Accept header.
    r = httpx.post(f"{base}{V1}/embed", params={"format": "json"}, headers={"Accept": "application/x-npy"}, files=files)
    assert r.headers["content-type"].startswith("application/json")


def test_search_by_vector_matches_search_by_upload_and_brute_force(served):
    root, ix, base = served
    q = root / "queries" / "q1.png"
    vec = httpx.post(f"{base}{V1}/embed", files=_files(q)).json()["items"][0]["vector"]
    by_upload = httpx.post(f"{base}{V1}/search", params={"k": 5}, files=_files(q)).json()
    by_vector = httpx.post(f"{base}{V1}/search/vector", params={"k": 5}, json={"vector": vec}).json()
    assert [h["id"] for h in by_vector["results"]] == [h["id"] for h in by_upload["results"]]
    assert [h["id"] for h in by_vector["results"]] == _brute(ix, np.asarray(vec), 5)
    assert by_vector["next"].startswith(f"{V1}/search/vector?") and "offset=5" in by_vector["next"]
    # Length does not matter (cosine): a scaled vector finds the same, with the same scores.
    scaled = httpx.post(f"{base}{V1}/search/vector", params={"k": 5}, json={"vector": [7.5 * x for x in vec]}).json()
    assert [h["id"] for h in scaled["results"]] == [h["id"] for h in by_vector["results"]]
    assert np.allclose([h["score"] for h in scaled["results"]], [h["score"] for h in by_vector["results"]], atol=1e-5)
    # Filters as POST /search takes them.
    folder = str(root / "photos" / "a")
    under = httpx.post(f"{base}{V1}/search/vector", params={"k": 3, "under": folder}, json={"vector": vec}).json()
    in_a = {rec.id for rec in ix if rec.path.startswith(folder + "/") and rec.status == "ok"}
    assert [h["id"] for h in under["results"]] == _brute(ix, np.asarray(vec), 3, in_a)
    # Several vectors: one result set each, in order.
    other = ix.vector(by_upload["results"][2]["id"]).tolist()
    many = httpx.post(f"{base}{V1}/search/vector", params={"k": 4}, json={"vectors": [vec, other]}).json()
    assert [[h["id"] for h in s["results"]] for s in many["searches"]] == [_brute(ix, np.asarray(v), 4) for v in (vec, other)]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"vector": [0.1] * 31}, "31 dimensions; the index has 32"),
        ({"vector": [0.0] * 32}, "all zeros"),
        ({"vectors": [[0.1] * 32, [0.0] * 32]}, "vector 1"),
        ({"vectors": [[0.1] * 32, [0.2] * 33]}, "vector 1"),
        ({"vector": [0.1] * 32, "vectors": [[0.1] * 32]}, "exactly one"),
        ({}, "exactly one"),
        ({"vectors": []}, "vectors"),
        ({"vector": [0.1] * 32, "k": 3}, "k"),  # k is a query parameter; an unknown body key is refused
        ({"vector": "abc"}, "vector"),
    ],
)
def test_bad_vectors_are_422_saying_which(served, body, words):
    _, _, base = served
    r = httpx.post(f"{base}{V1}/search/vector", json=body)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"], r.json()


def test_nan_and_inf_in_a_vector_are_422(served):
    _, _, base = served
    for raw in ("NaN", "Infinity", "-Infinity"):
        text = '{"vector": [' + ", ".join(["0.1"] * 31 + [raw]) + "]}"
        r = httpx.post(f"{base}{V1}/search/vector", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "NaN or infinite" in r.json()["error"], r.text


def test_search_with_several_files_answers_one_result_set_each(served):
    root, ix, base = served
    qs = sorted((root / "queries").glob("*.png"))
    r = httpx.post(f"{base}{V1}/search", params={"k": 4}, files=_files(qs[0], b"junk", qs[2]), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["name"] for s in body["searches"]] == [qs[0].name, "f1.png", qs[2].name]
    assert body["searches"][1]["error"].startswith("Bad image: ") and "results" not in body["searches"][1]
    for s, q in ((body["searches"][0], qs[0]), (body["searches"][2], qs[2])):
        alone = httpx.post(f"{base}{V1}/search", params={"k": 4}, files=_files(q)).json()
        assert [h["id"] for h in s["results"]] == [h["id"] for h in alone["results"]]
        assert [h["score"] for h in s["results"]] == pytest.approx([h["score"] for h in alone["results"]], abs=1e-6)


def test_upload_limits_on_several_files(served_index):
    """Each file under the per-file cap (a bigger one fails alone), at most MAX_FILES a request, and an empty
    multipart is a 422."""
    from vecsearch.config import MAX_FILES
    from vecsearch.server import create_app

    root, ix = served_index
    q = (root / "queries" / "q0.png").read_bytes()
    with live_server(create_app(ix, max_upload_bytes=len(q) + 10)) as base:
        r = httpx.post(f"{base}{V1}/embed", files=_files(q, q + b"\0" * 100), timeout=60)
        items = r.json()["items"]
        assert r.status_code == 200 and "vector" in items[0] and "cap" in items[1]["error"]
        r = httpx.post(f"{base}{V1}/embed", files=_files(*[b"x"] * (MAX_FILES + 1)), timeout=60)
        assert r.status_code == 422 and f"at most {MAX_FILES} files" in r.json()["error"]
        r = httpx.post(f"{base}{V1}/embed", files={"other": ("a.png", q, "image/png")})
        assert r.status_code == 422 and "file" in r.json()["error"]
        r = httpx.post(f"{base}{V1}/embed", params={"fromat": "npy"}, files=_files(q))
        assert r.status_code == 422 and "fromat" in r.json()["error"]


def test_embed_over_a_served_subprocess_needs_the_token(served_index, tmp_path):
    """`vecsearch serve` itself: the read token reads embeddings; none is a 401."""
    root, ix = served_index
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    proc, port = start_serve(root / "index", env={"VECSEARCH_TOKEN_FILE": str(token_file)})
    try:
        wait_until_serving(proc, port)
        base = f"http://127.0.0.1:{port}"
        q = (root / "queries" / "q2.png").read_bytes()
        assert httpx.post(f"{base}{V1}/embed", files=_files(q)).status_code == 401
        r = httpx.post(f"{base}{V1}/embed", files=_files(q), headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert r.status_code == 200, r.text
        assert float(np.asarray(r.json()["items"][0]["vector"]) @ ix.embed_bytes(q)) >= 0.9999
        vec = json.dumps({"vector": r.json()["items"][0]["vector"]})
        hits = httpx.post(
            f"{base}{V1}/search/vector",
            content=vec,
            headers={"Authorization": "Bearer s3cret", "content-type": "application/json"},
        ).json()["results"]
        assert [h["id"] for h in hits] == _brute(ix, ix.embed_bytes(q), len(hits))
    finally:
        proc.kill()
        proc.wait()
