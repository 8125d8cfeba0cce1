"""The web page in headless Chromium: upload an image, see the grid, ask why a result is similar,
click a result to search from it; and, on a server with a token, the printed /?token= address,
filters, a bad upload clearing old results, Back/Forward, a reload, originals and offline docs.

Needs Debian's `chromium` and `npm ci` in tests/browser (both done by `.ci/run`); skips with
the reason otherwise. The screenshots are kept in test-artifacts/ (browser_search.png,
browser_page_filters.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import live_server, make_image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")


TESTS = Path(__file__).parent
BROWSER_DIR = TESTS / "browser"
ARTIFACTS = TESTS.parent / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "no node on PATH"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core not installed (cd tests/browser && npm ci)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


class StripPrefix:
    """A reverse proxy's path handling in front of an app served with `root_path`: nginx's
    `location /vs/ { proxy_pass http://backend/; }` strips the prefix and passes the rest on."""

    def __init__(self, app, prefix: str):
        self.app, self.prefix = app, prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if not path.startswith(self.prefix + "/"):
                await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
                await send({"type": "http.response.body", "body": b"not behind the proxy's prefix"})
                return
            rest = path[len(self.prefix) :]
            scope = dict(scope, path=rest, raw_path=rest.encode())
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    "root_path, writes", [("", False), ("/vs", True)], ids=["at-the-root", "under-a-proxy-prefix-with-writes"]
)
def test_page_uploads_an_image_and_shows_a_grid_of_neighbours(tmp_path, root_path, writes):
    """The page at the root, and behind a proxy that serves it under /vs (relative addresses on the
    page, links in JSON with the prefix: every request the page makes goes under /vs). The write
    controls are there either way, shown only when the server takes writes."""
    from vecsearch import open_index
    from vecsearch.server import create_app

    for i in range(16):
        make_image(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i, size=(96, 64))
    query = make_image(tmp_path / "query.png", seed=500, size=(80, 80))
    ix = open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7)
    ix.add([tmp_path / "photos"])
    from vecsearch.store.models import ImagenetLabel

    with ix.store.session() as s, s.begin():  # as the ImageNet labelling step stores them
        s.add_all(
            ImagenetLabel(image_id=int(i), rank=1, class_index=int(i), wnid=f"n{i:08d}", name=f"class_{i}", prob=0.5)
            for i in ix.store.vector_ids()
        )
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / ("browser_search_under_a_prefix.png" if root_path else "browser_search.png")
    shot.unlink(missing_ok=True)

    new = [make_image(tmp_path / "new" / f"new{i}.png", seed=700 + i, size=(70, 50)) for i in range(2)]
    (tmp_path / "new" / "notes.png").write_bytes(b"not an image at all")
    adds = ",".join(map(str, [*new, tmp_path / "new" / "notes.png", tmp_path / "photos" / "p03.jpg"])) if writes else ""
    before = len(ix)
    app = create_app(ix, root_path=root_path, allow_writes=writes)
    with live_server(StripPrefix(app, root_path) if root_path else app) as server:
        base = server + root_path
        r = subprocess.run(
            ["node", str(BROWSER_DIR / "search_page.mjs"), base + "/", str(query), str(shot), "12"],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        # What the API says for the same requests: the page must show exactly that.
        api_upload = httpx.post(
            f"{base}/api/search", params={"k": 12}, files={"file": ("query.png", query.read_bytes(), "image/png")}
        ).json()["results"]
        api_similar = httpx.get(f"{base}/api/images/{seen['clicked']}/similar", params={"k": 12}).json()["results"]
        if writes:  # again, now dropping files onto the page and removing a card (which changes what the API says)
            r = subprocess.run(
                ["node", str(BROWSER_DIR / "search_page.mjs"), base + "/", str(query), str(shot), "12", adds],
                cwd=BROWSER_DIR,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert r.returncode == 0, r.stderr[-3000:]
            wrote = json.loads(r.stdout.strip().splitlines()[-1])
            assert wrote["consoleErrors"] == []
        after = len(ix)
    ix.close()

    assert seen["consoleErrors"] == []
    assert [c["id"] for c in seen["upload"]] == [h["id"] for h in api_upload] and len(api_upload) == 12
    assert all(c["imgLoaded"] for c in seen["upload"]), "some thumbnails did not load"
    first = seen["upload"][0]["text"]
    assert f"score {api_upload[0]['score']:.4f}" in first and api_upload[0]["name"] in first
    assert all(f"class_{c['id']} 50.0%" in c["text"] for c in seen["upload"])  # ImageNet label per card
    assert seen["caption1"] == "Similar to query.png"
    # Clicking a result searched from it: the grid now holds its neighbours, itself left out.
    assert seen["clicked"] == api_upload[1]["id"]
    assert seen["caption2"].startswith(f"Similar to #{seen['clicked']} ")
    assert [c["id"] for c in seen["similar"]] == [h["id"] for h in api_similar]
    assert seen["clicked"] not in [c["id"] for c in seen["similar"]]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    # "why similar?": both heatmaps loaded, at each image's aspect ratio. After an upload they
    # come from the upload endpoints (object URLs); after a search by id, from GET by id.
    why1, why2 = seen["why1"], seen["why2"]
    assert why1["title"].startswith(f"Why #1 {api_upload[0]['name']} is similar")
    assert [i["src"][:5] for i in why1["images"]] == ["blob:", "blob:"]
    assert why1["images"][0]["width"] == why1["images"][0]["height"] == 384  # the 80 x 80 query
    assert (why1["images"][1]["width"], why1["images"][1]["height"]) == (384, 256)  # a 96 x 64 photo
    assert why1["captions"] == ["the query (query.png)", f"#1 {api_upload[0]['name']}"]
    assert seen["panelHiddenAfterSearch"] is True
    first = api_similar[0]["id"]
    assert [i["src"] for i in why2["images"]] == [
        f"api/v1/images/{seen['clicked']}/explain?like={first}",
        f"api/v1/images/{first}/explain?like={seen['clicked']}",
    ]
    assert all((i["width"], i["height"]) == (384, 256) for i in why2["images"])
    # Behind the proxy: every request the page made (API calls, thumbnails, heatmaps) went under the prefix.
    assert seen["requested"] and all(p.startswith(root_path + "/") for p in seen["requested"]), seen["requested"]
    assert f"{root_path}/api/v1/images/{api_upload[0]['id']}/thumbnail" in seen["requested"]
    assert all(h["original"] == f"{root_path}/api/v1/images/{h['id']}/original" for h in api_upload)
    # The write controls: on every card and in the page, hidden unless the server takes writes.
    controls = seen["writeControls"]
    assert controls["addInput"] and controls["removeButtons"] == len(seen["similar"])
    assert controls["addHidden"] is (not writes) and controls["removeHidden"] == [not writes] * len(seen["similar"])
    if writes:
        # Dropped onto the page: two new images indexed, a non-image failed with its reason, an already
        # indexed file's bytes a duplicate; then a card removed (confirmed) is gone from the index too.
        statuses = [a["status"].split()[-1] for a in wrote["added"]]
        assert statuses == ["indexed", "indexed", "failed", "duplicate"], wrote["added"]
        assert wrote["added"][0]["text"].startswith("new0.png") and "not an image" in wrote["added"][2]["text"]
        assert wrote["removed"]["id"] == wrote["similar"][0]["id"] and "Removed" in wrote["removed"]["status"]
        assert after == before + 2 - 1
    else:
        assert seen["added"] is None and after == before


def test_page_with_a_token_filters_clears_on_error_and_goes_back(tmp_path):
    """The token address, a filtered search, a bad upload clearing old results, Back and Forward,
    a reload of a search by id, an original opened, and /docs and /redoc with nothing fetched from elsewhere."""
    from vecsearch import open_index
    from vecsearch.server import create_app

    photos = tmp_path / "photos"
    for i in range(10):
        make_image(photos / ("a" if i < 5 else "b") / f"p{i:02d}.jpg", seed=i, size=(96, 64))
    (tmp_path / "labels.csv").write_text(
        "photos/a/p00.jpg,cat\nphotos/a/p01.jpg,cat\nphotos/b/p05.jpg,dog\nphotos/b/p06.jpg,dog\n"
    )
    query = make_image(tmp_path / "query.png", seed=500, size=(80, 80))
    bad = tmp_path / "not-an-image.png"
    bad.write_bytes(b"this is text, not a PNG")
    ix = open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7)
    ix.add([photos])
    ix.teach(tmp_path / "labels.csv")
    ix.train_classifier("knn", k=1, name="nn1")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_page_filters.png"
    shot.unlink(missing_ok=True)
    token = "t0k/en&x"
    folder = str(photos / "a")
    auth = {"Authorization": f"Bearer {token}"}

    with live_server(create_app(ix, token=token)) as base:
        r = subprocess.run(
            ["node", str(BROWSER_DIR / "page_flows.mjs"), base, token, str(query), str(bad), folder, str(shot)],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        files = {"file": ("query.png", query.read_bytes(), "image/png")}
        api_all = httpx.post(f"{base}/api/search", params={"k": 48}, files=files, headers=auth).json()["results"]
        api_a = httpx.post(f"{base}/api/search", params={"k": 48, "under": folder}, files=files, headers=auth).json()["results"]
        api_from = httpx.get(
            f"{base}/api/images/{seen['clicked']}/similar", params={"k": 48, "under": folder}, headers=auth
        ).json()["results"]
    ix.close()

    assert seen["consoleErrors"] == [] and seen["external"] == []
    # The token left the address bar and lives in the tab's sessionStorage.
    assert seen["addressAfterLoad"] == "/" and seen["stored"] == token
    for address in (seen["addressUnfiltered"], seen["addressFiltered"], seen["reloaded"]["address"]):
        assert "token=" not in address and "t0k" not in address
    # Unfiltered, then filtered to folder a: exactly what the API gives.
    assert seen["unfiltered"] == [h["id"] for h in api_all] and len(api_all) == 10
    assert [c["id"] for c in seen["filtered"]] == [h["id"] for h in api_a] and len(api_a) == 5
    assert all(c["folder"] == folder for c in seen["filtered"])
    by_id = {h["id"]: h for h in api_a}
    for c in seen["filtered"]:
        hit = by_id[c["id"]]
        if hit["user_label"]:
            assert c["taught"] == f"label: {hit['user_label']['label']}" and c["predictions"] == []
        else:
            p = hit["predictions"][0]
            assert c["taught"] is None and c["predictions"] == [f"nn1 \u2192 {p['label']} {100 * p['confidence']:.0f}%"]
        assert c["original"] == f"/api/v1/images/{c['id']}/original?token=t0k%2Fen%26x"
    assert sum(c["taught"] == "label: cat" for c in seen["filtered"]) == 2
    assert "under=" in seen["addressFiltered"] and "k=48" in seen["addressFiltered"]
    # The bad upload: its error, and nothing of the results before it.
    assert seen["errorStatus"].startswith("Bad image:")
    assert seen["afterError"] == {"cards": 0, "moreHidden": True, "query": 0}
    # Back: the unfiltered search; Forward: the filtered one, filters back in the form.
    assert seen["back"] == {"ids": seen["unfiltered"], "under": "", "address": seen["addressUnfiltered"]}
    assert seen["forward"] == {"ids": [c["id"] for c in seen["filtered"]], "under": folder, "address": seen["addressFiltered"]}
    # From a result, with the filter kept; a reload of that address shows the same.
    assert seen["fromResult"]["ids"] == [h["id"] for h in api_from]
    assert f"similar={seen['clicked']}" in seen["fromResult"]["address"]
    assert seen["reloaded"]["ids"] == seen["fromResult"]["ids"] and seen["reloaded"]["under"] == folder
    assert seen["reloaded"]["caption"] == seen["fromResult"]["caption"]
    assert seen["originalFetch"]["status"] == 200 and seen["originalFetch"]["type"] == "image/jpeg"
    assert seen["originalFetch"]["target"] == "_blank" and seen["originalFetch"]["bytes"] > 500
    # Without the token: told to open the address `serve` printed.
    assert "/?token=" in seen["withoutToken"] and "Authorization" not in seen["withoutToken"]
    # Offline docs rendered the schema.
    assert seen["docs"]["title"].startswith("vecsearch") and seen["docs"]["failed"] == []
    assert "/api/v1/images/{image_id}/original" in seen["docs"]["operations"]
    assert "/api/v1/ready" in seen["docs"]["operations"] and "/metrics" in seen["docs"]["operations"]
    assert seen["redoc"]["title"].startswith("vecsearch")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
