"""The web page in headless Chromium: upload an image, see the grid, ask why a result is similar,
click a result to search from it.

Needs Debian's `chromium` and `npm ci` in tests/browser (both done by `.ci/run`); skips with
the reason otherwise. The screenshot is kept in test-artifacts/browser_search.png.
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


def test_page_uploads_an_image_and_shows_a_grid_of_neighbours(tmp_path):
    from vecsearch import open_index
    from vecsearch.server import create_app

    for i in range(16):
        make_image(tmp_path / "photos" / f"p{i:02d}.jpg", seed=i, size=(96, 64))
    query = make_image(tmp_path / "query.png", seed=500, size=(80, 80))
    ix = open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7)
    ix.add([tmp_path / "photos"])
    from vecsearch.store.models import ImagenetLabel

    with ix.store.session() as s, s.begin():  # as the ImageNet labelling step stores them
        s.add_all(ImagenetLabel(image_id=int(i), rank=1, class_index=int(i), wnid=f"n{i:08d}", name=f"class_{i}", prob=0.5)
                  for i in ix.store.vector_ids())
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "browser_search.png"
    shot.unlink(missing_ok=True)

    with live_server(create_app(ix)) as base:
        r = subprocess.run(["node", str(BROWSER_DIR / "search_page.mjs"), base + "/", str(query), str(shot), "12"],
                           cwd=BROWSER_DIR, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        # What the API says for the same requests: the page must show exactly that.
        api_upload = httpx.post(f"{base}/api/search", params={"k": 12},
                                files={"file": ("query.png", query.read_bytes(), "image/png")}).json()["results"]
        api_similar = httpx.get(f"{base}/api/images/{seen['clicked']}/similar", params={"k": 12}).json()["results"]
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
    assert [i["src"] for i in why2["images"]] == [f"/api/images/{seen['clicked']}/explain?like={first}",
                                                 f"/api/images/{first}/explain?like={seen['clicked']}"]
    assert all((i["width"], i["height"]) == (384, 256) for i in why2["images"])
