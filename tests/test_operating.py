"""Operating the service over real loopback HTTP: request ids, the access log, Prometheus metrics,
readiness, CORS, a root path behind a reverse proxy, and the deployment files."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import TESTS, live_server

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("prometheus_client")

ROOT = TESTS.parent
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _app(ix, **kw):
    from vecsearch.server import create_app

    return create_app(ix, warm=False, **kw)


def _upload(root):
    q = root / "queries" / "q0.png"
    return {"file": ("q0.png", q.read_bytes(), "image/png")}


# -- request ids -----------------------------------------------------------------------
def test_request_id_generated_kept_sanitised_and_in_error_bodies(served_index):
    root, ix = served_index
    with live_server(_app(ix, token="s3cret", max_upload_bytes=10_000)) as base:
        auth = {"Authorization": "Bearer s3cret"}
        ok = httpx.get(f"{base}/api/v1/stats", headers=auth)
        assert ok.status_code == 200 and HEX32.match(ok.headers["x-request-id"])
        again = httpx.get(f"{base}/api/v1/stats", headers=auth)
        assert again.headers["x-request-id"] != ok.headers["x-request-id"]  # one per request
        mine = httpx.get(f"{base}/api/v1/health", headers={"X-Request-ID": "client-abc.123:x"})
        assert mine.headers["x-request-id"] == "client-abc.123:x"
        for bad in ("x" * 129, "caf\xe9", "has space", "tab\there"):
            r = httpx.get(f"{base}/api/v1/health", headers={"X-Request-ID": bad.encode("latin-1")})
            assert HEX32.match(r.headers["x-request-id"]), bad
        # Every error body names the request it answers: the handlers' and the middlewares' refusals.
        errors = {
            401: httpx.get(f"{base}/api/v1/stats", headers={"X-Request-ID": "r-401"}),
            404: httpx.get(f"{base}/api/v1/images/999999", headers={**auth, "X-Request-ID": "r-404"}),
            422: httpx.get(f"{base}/api/v1/images/0", headers={**auth, "X-Request-ID": "r-422"}),
            400: httpx.get(f"{base}/api/v1/health", headers={"Host": "evil.example", "X-Request-ID": "r-400"}),
            413: httpx.post(
                f"{base}/api/v1/search",
                headers={**auth, "X-Request-ID": "r-413"},
                files={"file": ("big.png", b"\0" * 200_000, "image/png")},
            ),
        }
        for status, r in errors.items():
            assert r.status_code == status, (status, r.text)
            assert r.json()["request_id"] == f"r-{status}" == r.headers["x-request-id"], (status, r.text)
            assert r.headers.get_list("x-request-id") == [f"r-{status}"]  # once, not twice
        bad_image = httpx.post(f"{base}/api/v1/search", headers=auth, files={"file": ("x.png", b"not an image", "image/png")})
        assert bad_image.status_code == 422 and bad_image.json()["request_id"] == bad_image.headers["x-request-id"]


def test_an_internal_error_carries_the_request_id_and_is_logged(served_index, caplog):
    _, ix = served_index
    app = _app(ix)

    def boom() -> dict:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom, include_in_schema=False)
    caplog.set_level(logging.INFO, logger="vecsearch.access")
    with live_server(app) as base:
        r = httpx.get(f"{base}/boom", headers={"X-Request-ID": "bug-1"})
        deadline = time.monotonic() + 5
        while not any("bug-1" in line for line in _access_lines(caplog)) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert r.status_code == 500 and r.json()["request_id"] == "bug-1" == r.headers["x-request-id"]
    assert [line for line in _access_lines(caplog) if "bug-1" in line][0].startswith("GET /boom 500 ")


# -- the access log --------------------------------------------------------------------
def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vecsearch.access"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_one_access_log_line_per_request(served_index, caplog, log_format):
    _, ix = served_index
    caplog.set_level(logging.INFO, logger="vecsearch.access")
    with live_server(_app(ix, token="s3cret", log_format=log_format)) as base:
        caplog.clear()
        ids = []
        for url, kw in (
            ("/api/v1/images/1", {"headers": {"Authorization": "Bearer s3cret", "X-Request-ID": "one"}}),
            # Not accepted (a space would split a text log line): a new id. (A control character never gets this far:
            # uvicorn's HTTP parser, httptools where installed as ray[serve] brings it, refuses the request itself.)
            ("/api/v1/images/2?token=s3cret", {"headers": {"X-Request-ID": "tw o"}}),
            ("/api/v1/stats?token=wrong", {}),
            ("/no/such/path", {}),
        ):
            r = httpx.get(base + url, **kw)
            ids.append(r.headers["x-request-id"])
        deadline = time.monotonic() + 5
        while len(_access_lines(caplog)) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = _access_lines(caplog)
    assert len(lines) == 4, lines
    assert all("s3cret" not in line and "wrong" not in line and "token" not in line for line in lines)
    assert all(line.isprintable() for line in lines)
    if log_format == "json":
        rows = [json.loads(line) for line in lines]
        assert [(r["method"], r["route"], r["status"], r["request_id"]) for r in rows] == [
            ("GET", "/api/v1/images/{image_id}", 200, "one"),
            ("GET", "/api/v1/images/{image_id}", 200, ids[1]),
            ("GET", "/api/v1/stats", 401, ids[2]),
            ("GET", "/no/such/path", 404, ids[3]),
        ]
        assert all(isinstance(r["ms"], float) and r["ms"] >= 0 and r["time"].endswith("+00:00") for r in rows)
    else:
        assert re.fullmatch(r"GET /api/v1/images/\{image_id\} 200 [0-9.]+ms id=one", lines[0]), lines[0]
        assert lines[2].startswith("GET /api/v1/stats 401 ") and lines[2].endswith(f"id={ids[2]}")
        assert lines[3].startswith("GET /no/such/path 404 ")


def test_access_log_escapes_control_characters():
    from vecsearch.server.observe import escaped

    assert escaped("a\nb\x1b[31m\x00") == "a\\nb\\x1b[31m\\x00"
    assert escaped("x" * 400).endswith("...") and len(escaped("x" * 400)) == 303


# -- metrics ---------------------------------------------------------------------------
def _families(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def _sample(families: dict, family: str, name: str, **labels) -> float:
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_metrics_parse_move_with_requests_and_need_the_token(served_index):
    root, ix = served_index
    with live_server(_app(ix, token="s3cret")) as base:
        auth = {"Authorization": "Bearer s3cret"}
        refused = httpx.get(f"{base}/metrics")
        assert refused.status_code == 401 and "request_id" in refused.json()
        first = httpx.get(f"{base}/metrics", headers=auth)
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
        before = _families(first.text)
        assert _sample(before, "vecsearch_index_vectors", "vecsearch_index_vectors") == len(ix)
        assert _sample(before, "vecsearch_index_generation", "vecsearch_index_generation") == ix.generation
        assert _sample(before, "vecsearch_batcher_max_batch", "vecsearch_batcher_max_batch") >= 1  # the app's own batcher
        route = "/api/v1/images/{image_id}"
        for i in (1, 2, 3):
            assert httpx.get(f"{base}/api/v1/images/{i}", headers=auth).status_code == 200
        httpx.get(f"{base}/api/v1/images/999999", headers=auth)
        assert httpx.post(f"{base}/api/v1/search", headers=auth, files=_upload(root)).status_code == 200
        after = _families(httpx.get(f"{base}/metrics", headers=auth).text)
    ok = dict(method="GET", route=route, status="200")
    assert _sample(after, "vecsearch_requests", "vecsearch_requests_total", **ok) == 3
    assert _sample(after, "vecsearch_requests", "vecsearch_requests_total", method="GET", route=route, status="404") == 1
    assert _sample(after, "vecsearch_requests", "vecsearch_requests_total", method="GET", route="/metrics", status="401") == 1
    assert (
        _sample(after, "vecsearch_requests", "vecsearch_requests_total", method="POST", route="/api/v1/search", status="200") == 1
    )
    assert _sample(after, "vecsearch_request_duration_seconds", "vecsearch_request_duration_seconds_count", **ok) == 3
    assert _sample(after, "vecsearch_request_duration_seconds", "vecsearch_request_duration_seconds_sum", **ok) > 0
    assert _sample(after, "vecsearch_model_batch_size", "vecsearch_model_batch_size_count") >= 1  # the search's model call
    assert _sample(after, "vecsearch_batcher_rows", "vecsearch_batcher_rows_total") >= 1


def test_no_batcher_no_batcher_metrics(served_index):
    _, ix = served_index
    with live_server(_app(ix, metrics_public=True, batch_size=0)) as base:
        families = _families(httpx.get(f"{base}/metrics").text)
    assert "vecsearch_batcher_queue_depth" not in families  # no batcher on this model: nothing of it


def test_index_gauges_follow_commits_from_another_writer(tmp_path, tiny_index):
    from helpers import make_image

    for i in range(3):
        make_image(tmp_path / "first" / f"p{i}.jpg", seed=i)
    tiny_index.add([tmp_path / "first"])
    with live_server(_app(tiny_index, metrics_public=True)) as base:
        before = _families(httpx.get(f"{base}/metrics").text)
        for i in range(2):
            make_image(tmp_path / "more" / f"m{i}.jpg", seed=40 + i)
        tiny_index.add([tmp_path / "more"])  # as `vecsearch index` would, besides the server
        after = _families(httpx.get(f"{base}/metrics").text)
    assert _sample(before, "vecsearch_index_vectors", "vecsearch_index_vectors") == 3
    assert _sample(after, "vecsearch_index_vectors", "vecsearch_index_vectors") == 5
    assert _sample(after, "vecsearch_index_generation", "vecsearch_index_generation") > _sample(
        before, "vecsearch_index_generation", "vecsearch_index_generation"
    )


def test_metrics_public_and_per_app_registries(served_index):
    _, ix = served_index
    with live_server(_app(ix, token="s3cret", metrics_public=True)) as a, live_server(_app(ix)) as b:
        httpx.get(f"{a}/api/v1/health")
        httpx.get(f"{a}/api/v1/health")
        httpx.get(f"{b}/api/v1/health")
        fa = _families(httpx.get(f"{a}/metrics").text)  # public: no token needed
        fb = _families(httpx.get(f"{b}/metrics").text)
    health = dict(method="GET", route="/api/v1/health", status="200")
    assert _sample(fa, "vecsearch_requests", "vecsearch_requests_total", **health) == 2
    assert _sample(fb, "vecsearch_requests", "vecsearch_requests_total", **health) == 1


def test_batcher_stats_and_batch_sizes_are_exported_when_the_model_has_a_batcher(served_index):
    """The batcher is another helper's; a stand-in with its contract (`stats()`, `on_batch`) is read the same way."""
    from vecsearch.server.observe import Metrics

    _, ix = served_index

    class Batcher:
        on_batch: list = []

        def stats(self):
            return {
                "queue_depth": 3,
                "batches": 7,
                "rows": 40,
                "rejected": 2,
                "dropped": 1,
                "max_batch": 32,
                "max_delay_ms": 5.0,
                "max_queue": 256,
            }

    class Model:
        batcher = Batcher()

    class Index:
        model = Model()
        searcher = ix.searcher
        generation = ix.generation

    m = Metrics(Index())  # type: ignore[arg-type]
    for size in (1, 4, 4, 32):
        for hook in Model.batcher.on_batch:
            hook(size)
    m.attach()  # idempotent: the hook is added once
    assert len(Model.batcher.on_batch) == 1
    f = _families(m.exposition()[0].decode())
    assert _sample(f, "vecsearch_batcher_queue_depth", "vecsearch_batcher_queue_depth") == 3
    assert _sample(f, "vecsearch_batcher_rejected", "vecsearch_batcher_rejected_total") == 2
    assert _sample(f, "vecsearch_batcher_dropped", "vecsearch_batcher_dropped_total") == 1
    assert _sample(f, "vecsearch_model_batch_size", "vecsearch_model_batch_size_count") == 4
    assert _sample(f, "vecsearch_model_batch_size", "vecsearch_model_batch_size_sum") == 41
    assert _sample(f, "vecsearch_model_batch_size", "vecsearch_model_batch_size_bucket", le="4.0") == 3


# -- readiness -------------------------------------------------------------------------
def test_ready_is_503_until_start_up_is_over_then_200(served_index):
    import asyncio

    _, ix = served_index
    app = _app(ix, token="s3cret")

    async def before_start_up():  # ASGITransport runs no lifespan: the app as a server sees it before start-up ends
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            return await c.get("/api/v1/ready"), await c.get("/api/v1/health")

    r, health = asyncio.run(before_start_up())
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "Not ready" in r.json()["error"]
    assert health.status_code == 200  # liveness answers all along
    with live_server(app) as base:
        r = httpx.get(f"{base}/api/v1/ready")  # no token needed: load balancers and HEALTHCHECKs ask it
        assert r.status_code == 200 and r.json()["status"] == "ready" and r.json()["vectors"] == len(ix)
        assert httpx.get(f"{base}/api/ready").status_code == 200  # the /api alias too
    assert app.state.service.ready is False  # shut down: not ready any more


# -- CORS ------------------------------------------------------------------------------
def _preflight(base: str, origin: str):
    return httpx.options(
        f"{base}/api/v1/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-request-id",
        },
    )


def test_cors_allows_listed_origins_only_and_is_off_by_default(served_index):
    _, ix = served_index
    with live_server(_app(ix, cors_origins=["https://app.example.com/"])) as base:
        ok = _preflight(base, "https://app.example.com")
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example.com"
        allowed = ok.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "x-request-id" in allowed
        other = _preflight(base, "https://evil.example")
        assert "access-control-allow-origin" not in other.headers
        simple = httpx.get(f"{base}/api/v1/health", headers={"Origin": "https://app.example.com"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    with live_server(_app(ix)) as base:
        off = _preflight(base, "https://app.example.com")
        assert "access-control-allow-origin" not in off.headers and off.status_code in (404, 405)


# -- a root path behind a reverse proxy ---------------------------------------------------
def test_root_path_links_whether_the_proxy_strips_the_prefix_or_not(served_index):
    """Starlette's root_path: requests may arrive as /vs/api/v1/... (a proxy passing the path on) or
    /api/v1/... (nginx `proxy_pass http://backend/;` stripping it); both are served, and every link
    in a body starts with /vs, which is what the browser sees."""
    root, ix = served_index
    with live_server(_app(ix, root_path="/vs/")) as base:
        for prefix in ("/vs", ""):
            hits = httpx.post(f"{base}{prefix}/api/v1/search", params={"k": 2}, files=_upload(root))
            assert hits.status_code == 200, (prefix, hits.text)
            body = hits.json()
            first = body["results"][0]
            assert first["thumbnail"] == f"/vs/api/v1/images/{first['id']}/thumbnail"
            assert first["original"] == f"/vs/api/v1/images/{first['id']}/original"
            assert body["next"].startswith("/vs/api/v1/search?k=2&offset=2")
            one = httpx.get(f"{base}{prefix}/api/v1/images/{first['id']}").json()
            assert one["similar"] == f"/vs/api/v1/images/{first['id']}/similar"
            assert httpx.get(f"{base}{prefix}/api/v1/images", params={"limit": 2}).json()["next"].startswith("/vs/api/v1/images?")
            sim = httpx.get(f"{base}{prefix}/api/v1/images/{first['id']}/similar", params={"k": 1}).json()
            assert sim["results"][0]["thumbnail"].startswith("/vs/api/v1/images/")
            # The link, as the browser resolves it against the proxy, reaches the thumbnail.
            thumb = httpx.get(base + (first["thumbnail"] if prefix else first["thumbnail"].removeprefix("/vs")))
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            page = httpx.get(f"{base}{prefix}/")
            assert page.status_code == 200 and 'fetch("/api' not in page.text and '"/api/' not in page.text
            docs = httpx.get(f"{base}{prefix}/docs").text
            assert "/vs/openapi.json" in docs
        assert httpx.get(f"{base}/vs/openapi.json").json()["servers"] == [{"url": "/vs"}]
        m = _families(httpx.get(f"{base}/vs/metrics").text)
    # Route templates in metrics are the app's own, without the prefix.
    assert _sample(m, "vecsearch_requests", "vecsearch_requests_total", route="/api/v1/search", status="200") == 2


def test_root_path_is_checked():
    from vecsearch.errors import VecsearchError
    from vecsearch.server.app import clean_root_path

    assert clean_root_path("") == clean_root_path("/") == ""
    assert clean_root_path("/a/b/") == "/a/b"
    for bad in ("vs", "/a?b", "/a b", "/a\nb"):
        with pytest.raises(VecsearchError):
            clean_root_path(bad)


# -- `vecsearch serve` -----------------------------------------------------------------
def _serve(index_dir, *flags):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--index", str(index_dir), "--port", str(port), "--log-level", "warning", *flags]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; app({args!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


@pytest.mark.slow
def test_serve_flags_json_access_log_root_path_cors_and_public_metrics(served_index, tmp_path):
    root, _ = served_index
    (tmp_path / "token").write_text("file-token\n")
    proc, port = _serve(
        root / "index",
        "--token-file",
        str(tmp_path / "token"),
        "--log-format",
        "json",
        "--root-path",
        "/vs",
        "--cors-origin",
        "https://app.example.com",
        "--metrics-public",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                ready = httpx.get(f"{base}/api/v1/ready", timeout=2, headers={"X-Request-ID": "probe"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert ready.status_code == 200
        r = httpx.post(f"{base}/vs/api/v1/search", params={"k": 1, "token": "file-token"}, files=_upload(root))
        assert r.json()["results"][0]["thumbnail"].startswith("/vs/api/v1/images/")
        assert "access-control-allow-origin" in _preflight(base, "https://app.example.com").headers
        assert httpx.get(f"{base}/metrics").status_code == 200  # public
        assert httpx.get(f"{base}/api/v1/stats").status_code == 401  # the rest is not
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    rows = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"request_id": "probe", "route": "/api/v1/ready", "status": 200, "method": "GET"}.items() <= rows[0].items()
    assert [r["route"] for r in rows[1:]] == ["/api/v1/search", "/api/v1/search", "/metrics", "/api/v1/stats"]
    assert not [line for line in err.splitlines() if line.startswith("{") and "file-token" in line]  # never in the access log


def test_serve_help_lists_the_operating_flags():
    from helpers import run

    out = run("serve", "--help").output
    for flag in ("--root-path", "--cors-origin", "--log-format", "--metrics-public", "--access-log"):
        assert flag in out, flag


# -- deployment files ------------------------------------------------------------------
def test_dockerfile_runs_as_non_root_with_the_index_on_a_volume_and_a_readiness_healthcheck():
    """No container runtime here (docs/service.md says so): the Dockerfile's lines are checked instead."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.") and "slim" in lines[0]
    assert any(re.match(r"RUN .*pip install .*\.\[cpu,server\]", line) for line in lines)
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1].split()[1] not in ("root", "0")
    assert 'VOLUME ["/index"]' in lines or "VOLUME /index" in lines
    assert any(line.startswith("EXPOSE 8000") for line in lines)
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    health += " " + " ".join(lines[lines.index(health) + 1 : lines.index(health) + 3])
    assert "/api/v1/ready" in health and "urllib" in health
    cmd = [line for line in lines if line.startswith("CMD")][-1]  # the last CMD counts (the first is the HEALTHCHECK one)
    assert '"serve"' in cmd and '"0.0.0.0"' in cmd and "token" not in cmd.lower()
    assert ".git" in (ROOT / ".dockerignore").read_text()
    unit = (ROOT / "deploy" / "vecsearch.service").read_text()
    assert "EnvironmentFile=" in unit or "LoadCredential=" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "--token " not in exec_start and "VECSEARCH_TOKEN=" not in exec_start
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert "vecsearch-index:/index" in compose and "VECSEARCH_TOKEN_FILE: /run/secrets/" in compose
