"""Writes forwarded from a reader app to the writer app (what Ray Serve's replicas do, here in one
process): the same answers as a local write, every guard applied, errors and the merged scrape.
The replicas themselves, on a real Ray, are in tests/test_serve_ray.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DIM, make_image  # noqa: E402

from vecsearch import open_index  # noqa: E402
from vecsearch.errors import VecsearchError  # noqa: E402
from vecsearch.server import create_app  # noqa: E402
from vecsearch.server.forwarding import WriterUnavailable, answer  # noqa: E402

V1 = "/api/v1"
ADMIN, READ = "admin-token", "read-token"
BASE = "http://127.0.0.1"


@pytest.fixture()
def pair(tmp_path):
    """(reader client, writer client, forwarded requests): a reader on the index opened read-only whose
    writes go to a writer app on the same folder, as on Ray (there, through a deployment handle)."""
    for i in range(4):
        make_image(tmp_path / "photos" / f"p{i}.png", seed=i)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])
    settings = dict(token=READ, admin_token=ADMIN, batch_size=0)
    writer_ix = open_index(tmp_path / "ix", create=False)
    reader_ix = open_index(tmp_path / "ix", create=False, read_only=True)
    writer = create_app(writer_ix, **settings)
    seen = []
    loop = asyncio.new_event_loop()  # the writer's own loop, in its own thread: another process on Ray
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def forward(request):
        seen.append(request)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(answer(writer, request), loop))

    reader = create_app(reader_ix, forward_writes=forward, **settings)
    with TestClient(writer, base_url=BASE) as w, TestClient(reader, base_url=BASE) as r:
        yield r, w, seen, tmp_path
    loop.call_soon_threadsafe(loop.stop)
    writer_ix.close()
    reader_ix.close()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_write_through_the_reader_is_the_writers_and_the_reader_sees_it(pair):
    reader, writer, seen, tmp = pair
    data = make_image(tmp / "new.png", seed=50).read_bytes()
    r = reader.post(f"{V1}/images", files=[("file", ("new.png", data, "image/png"))], headers=auth(ADMIN))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["status"] == "indexed" and len(seen) == 1 and seen[0]["method"] == "POST"
    # The reader (read-only) follows the writer's commit: the new image is its own nearest neighbour.
    hits = reader.post(f"{V1}/search", files=[("file", ("q.png", data, "image/png"))], params={"k": 1}, headers=auth(READ))
    assert hits.json()["results"][0]["id"] == item["id"], hits.text
    again = reader.post(f"{V1}/images", files=[("file", ("again.png", data, "image/png"))], headers=auth(ADMIN))
    assert again.json()["items"][0] == {**item, "name": "again.png", "status": "duplicate"}
    # Labels and removal are forwarded too; what they answer is the writer's.
    lab = reader.put(f"{V1}/images/{item['id']}/label", json={"label": "cat"}, headers=auth(ADMIN))
    assert lab.status_code == 200 and lab.json()["label"] == "cat", lab.text
    assert reader.get(f"{V1}/images/{item['id']}", headers=auth(READ)).json()["user_label"]["label"] == "cat"
    gone = reader.delete(f"{V1}/images/{item['id']}", headers=auth(ADMIN))
    assert gone.status_code == 200 and gone.json()["deleted_file"] is True
    assert reader.get(f"{V1}/images/{item['id']}", headers=auth(READ)).status_code == 404
    assert [s["method"] for s in seen] == ["POST", "POST", "PUT", "DELETE"]


def test_the_writers_guards_answer_forwarded_writes(pair):
    reader, _, seen, tmp = pair
    data = make_image(tmp / "new.png", seed=51).read_bytes()
    files = [("file", ("new.png", data, "image/png"))]
    assert reader.post(f"{V1}/images", files=files).status_code == 401
    r = reader.post(f"{V1}/images", files=files, headers=auth(READ))
    assert r.status_code == 403 and "only read" in r.json()["error"]
    r = reader.put(f"{V1}/images/1/label", json={"label": ""}, headers=auth(ADMIN))
    assert r.status_code == 422
    # Not writes: answered by the reader itself, never forwarded.
    n = len(seen)
    assert reader.get(f"{V1}/images/1", headers=auth(READ)).status_code == 200
    assert reader.put(f"{V1}/images/1", headers=auth(ADMIN)).status_code == 405
    assert reader.post(f"{V1}/search/vector", json={"vector": [1.0] * DIM}, headers=auth(READ)).status_code == 200
    assert len(seen) == n


def test_a_writer_that_cannot_take_a_write_is_503_with_retry_after(tmp_path):
    make_image(tmp_path / "photos" / "p.png", seed=1)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])

    async def busy(request):
        raise WriterUnavailable("The writer is busy: retry shortly.", 3)

    with open_index(tmp_path / "ix", create=False, read_only=True) as ix:
        with TestClient(create_app(ix, allow_writes=True, forward_writes=busy, batch_size=0), base_url=BASE) as c:
            r = c.delete(f"{V1}/images/1")
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["error"] == "The writer is busy: retry shortly." and "request_id" in r.json()


def test_merged_scrapes_keep_every_replicas_samples():
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from vecsearch.server.observe import merge_scrapes

    def scrape(n: int) -> bytes:
        reg = CollectorRegistry()
        Counter("vecsearch_requests", "Requests.", ["route"], registry=reg).labels("/a").inc(n)
        Histogram("vecsearch_model_batch_size", "Batch.", registry=reg, buckets=(1, 8)).observe(n)
        return generate_latest(reg)

    merged = merge_scrapes({"reader-a": scrape(2), "writer-b": scrape(5)})
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
    counts = {s.labels["replica"]: s.value for s in families["vecsearch_requests"].samples if s.name.endswith("_total")}
    assert counts == {"reader-a": 2.0, "writer-b": 5.0}
    sums = {s.labels["replica"]: s.value for s in families["vecsearch_model_batch_size"].samples if s.name.endswith("_sum")}
    assert sums == {"reader-a": 2.0, "writer-b": 5.0}
    assert merged.decode().count("# TYPE vecsearch_requests_total counter") == 1


def test_pools_and_autoscale_are_checked_without_ray(monkeypatch):
    from vecsearch.server import ray_serve
    from vecsearch.server.ray_serve import Plan, Pool, check_pool, local_cpus, local_threads, parse_autoscale, replica_reason

    assert parse_autoscale("1:4") == (1, 4)
    for bad in ("4", "a:b", "3:1", "0:2"):
        with pytest.raises(VecsearchError, match="MIN:MAX"):
            Pool(autoscale=parse_autoscale(bad))
    plan = Plan(index="/x", writes=True)
    with pytest.raises(VecsearchError, match=r"2 replicas with 1 GPU each need 2 GPUs; the Ray cluster has 1") as e:
        check_pool({"CPU": 16, "GPU": 1}, plan, Pool(replicas=2, gpus_per_replica=1))
    assert e.value.option == "gpus_per_replica"
    check_pool({"CPU": 16, "GPU": 1}, plan, Pool(replicas=2, gpus_per_replica=0.5))
    with pytest.raises(VecsearchError, match=r"need 3.5 CPUs; the Ray cluster has 2"):
        check_pool({"CPU": 2}, plan, Pool(replicas=3))
    check_pool({"CPU": 2}, plan, Pool(autoscale=(1, 8)))  # the minimum must fit now; more come as the cluster grows
    assert local_cpus(plan, Pool(replicas=2)) >= 3  # two readers and the writer on this machine's cores
    # A Ray started here splits the machine's cores among the replicas' models; one replica keeps them all.
    monkeypatch.setattr(ray_serve.os, "cpu_count", lambda: 8)
    assert (local_threads(Pool(replicas=1)), local_threads(Pool(replicas=2)), local_threads(Pool(replicas=3))) == (None, 4, 2)
    assert local_threads(Pool(autoscale=(1, 4))) is None and local_threads(Pool(replicas=16)) == 1
    msg = "Deploying failed:\nTraceback (most recent call last):\n  ...\nvecsearch.errors.WeightsError: No weights file at /w.h5."
    assert replica_reason(msg) == "No weights file at /w.h5."


def test_vectors_are_the_same_whichever_app_answers(pair):
    reader, writer, _, _ = pair
    body = {"vector": np.linspace(-1, 1, DIM).tolist()}
    a = reader.post(f"{V1}/search/vector", json=body, params={"k": 3}, headers=auth(READ))
    b = writer.post(f"{V1}/search/vector", json=body, params={"k": 3}, headers=auth(READ))
    assert a.status_code == b.status_code == 200, a.text
    assert a.json() == b.json() and len(a.json()["results"]) == 3


def test_a_replicas_health_is_its_start_up_and_its_index(tmp_path):
    """What Ray's health check asks each replica: finished starting (model built), and the index still reads."""
    from vecsearch.server.ray_serve import check_ready

    make_image(tmp_path / "photos" / "p.png", seed=1)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])
    with open_index(tmp_path / "ix", create=False, read_only=True) as ix:
        app = create_app(ix, batch_size=0)
        svc = app.state.service
        with pytest.raises(RuntimeError, match="not finished starting"):
            check_ready(svc)
        with TestClient(app, base_url=BASE):
            check_ready(svc)
            (tmp_path / "ix" / "index.db").write_bytes(b"")  # the folder went away under it
            with pytest.raises(Exception):  # noqa: B017 - whatever the store raises makes Ray replace the replica
                check_ready(svc)
