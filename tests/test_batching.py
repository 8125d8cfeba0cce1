"""The micro-batcher: batches form under concurrency, each caller gets its own rows, the queue is
bounded, abandoned requests never reach the model; and the same through a real server."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from vecsearch import RequestDroppedError, ServiceBusyError
from vecsearch.batching import MicroBatcher


class FakeModel:
    """Rows in, a deterministic function of each row out; records every call's batch size."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls: list[int] = []
        self.delay = delay
        self.fail = fail
        self.gate: threading.Event | None = None  # set: calls wait for it

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model broke")
        return self.alone(pixels)

    @staticmethod
    def alone(pixels: np.ndarray) -> np.ndarray:
        flat = pixels.reshape(len(pixels), -1).astype(np.float32)
        return np.stack([flat.sum(1), flat.max(1), flat[:, 0]], axis=1)


def pixels(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


@pytest.fixture
def batcher_of():
    made: list[MicroBatcher] = []

    def make(model, **kw) -> MicroBatcher:
        b = MicroBatcher(model, **{"max_batch": 8, "max_delay": 0.05, **kw})
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_concurrent_submissions_share_model_calls_and_each_gets_its_rows(batcher_of):
    model = FakeModel(delay=0.02)
    b = batcher_of(model, max_batch=16, max_delay=0.05)
    inputs = [pixels(i, n=1 + i % 3) for i in range(12)]
    start = threading.Barrier(12)

    def call(x):
        start.wait()
        return b.embed(x)

    with ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(call, inputs))
    for x, out in zip(inputs, outs, strict=True):
        np.testing.assert_array_equal(out, FakeModel.alone(x))  # exactly its rows, as if run alone
    assert len(model.calls) < 12 and max(model.calls) > 1
    assert sum(model.calls) == sum(len(x) for x in inputs)
    assert max(model.calls) <= 16
    s = b.stats()
    assert s["rows"] == sum(len(x) for x in inputs) and s["batches"] == len(model.calls) and s["queue_depth"] == 0


def test_a_lone_request_is_not_delayed(batcher_of):
    model = FakeModel()
    b = batcher_of(model, max_delay=0.5)
    t = time.monotonic()
    b.embed(pixels(1))
    assert time.monotonic() - t < 0.25  # a quiet service runs it at once
    seen: list[int] = []
    b.on_batch.append(seen.append)
    for i in range(3):
        t = time.monotonic()
        b.embed(pixels(i, 2))
        assert time.monotonic() - t < 0.25
    assert seen == [2, 2, 2]


def test_a_waiting_request_waits_at_most_max_delay(batcher_of):
    model = FakeModel()
    model.gate = threading.Event()
    b = batcher_of(model, max_batch=64, max_delay=0.1)
    first = b.submit(pixels(0))  # runs at once, held in the model
    time.sleep(0.05)
    second = b.submit(pixels(1))
    third = b.submit(pixels(2))
    model.gate.set()
    first.result(5)
    t = time.monotonic()
    second.result(5)
    third.result(5)
    assert time.monotonic() - t < 0.5
    assert model.calls == [1, 2]  # the two that waited went together, long before the batch was full


def test_full_queue_refuses_at_once_with_retry_after(batcher_of):
    model = FakeModel()
    model.gate = threading.Event()
    b = batcher_of(model, max_batch=1, max_queue=2)
    running = b.submit(pixels(0))
    deadline = time.monotonic() + 5
    while not model.calls:  # the first is in the model; two may wait
        assert time.monotonic() < deadline
        time.sleep(0.01)
    waiting = [b.submit(pixels(1)), b.submit(pixels(2))]
    t = time.monotonic()
    with pytest.raises(ServiceBusyError) as e:
        b.submit(pixels(3))
    assert time.monotonic() - t < 0.1 and e.value.retry_after >= 1
    assert b.stats()["rejected"] == 1 and b.stats()["queue_depth"] == 2
    model.gate.set()
    for f in (running, *waiting):
        assert f.result(5).shape == (1, 3)


def test_deadline_passed_or_cancelled_is_never_run(batcher_of):
    model = FakeModel()
    model.gate = threading.Event()
    b = batcher_of(model, max_batch=8, max_delay=0.01)
    busy = b.submit(pixels(0))
    while not model.calls:
        time.sleep(0.01)
    gone = threading.Event()
    late = b.submit(pixels(1), deadline=time.monotonic() + 0.05)
    cancelled = b.submit(pixels(2), cancelled=gone.is_set)
    kept = b.submit(pixels(3), cancelled=lambda: False, deadline=time.monotonic() + 60)
    time.sleep(0.1)
    gone.set()
    model.gate.set()
    busy.result(5)
    for f in (late, cancelled):
        with pytest.raises(RequestDroppedError):
            f.result(5)
    np.testing.assert_array_equal(kept.result(5), FakeModel.alone(pixels(3)))
    assert model.calls == [1, 1]  # only `kept` ran after the first
    assert b.stats()["dropped"] == 2


def test_deadlines_size_the_batch_and_hopeless_requests_are_dropped_unrun(batcher_of):
    """A model taking 0.1 s a row, 8 requests waiting that are due in 0.65 s: the next call takes only what
    can end in time (never all 8), and those that could no longer finish are dropped without running."""
    calls: list[int] = []
    gate = threading.Event()

    def model(px: np.ndarray) -> np.ndarray:
        calls.append(len(px))
        if len(calls) == 2:
            assert gate.wait(10)
        time.sleep(0.1 * len(px))
        return FakeModel.alone(px)

    b = batcher_of(model, max_batch=8, max_delay=0.01)
    b.embed(pixels(0))  # measures 0.1 s a row
    busy = b.submit(pixels(1))  # holds the model while the others queue
    while len(calls) < 2:
        time.sleep(0.005)
    due = time.monotonic() + 0.75
    waiting = [b.submit(pixels(10 + i), deadline=due) for i in range(8)]
    gate.set()
    busy.result(5)
    done, dropped = [], []
    for i, f in enumerate(waiting):
        try:
            np.testing.assert_array_equal(f.result(5), FakeModel.alone(pixels(10 + i)))
            done.append(i)
        except RequestDroppedError as e:
            assert "deadline" in str(e)
            dropped.append(i)
    assert done and dropped and done == list(range(len(done))), (done, dropped, calls)  # the first in line ran
    assert max(calls[2:]) < 8, calls  # one call for all 8 would have ended past their deadline
    assert time.monotonic() < due + 0.3  # nothing ran long past it
    assert b.stats()["dropped"] == len(dropped) and b.stats()["row_ms"] > 50 and b.stats()["model_cpu_s"] >= 0


def test_a_client_timeout_header_is_its_deadline(served_index):
    """X-Request-Timeout: seconds the client waits; a request that cannot be served in them is a 503 at once,
    not work for nobody; a malformed one is a 422."""
    from helpers import live_server

    from vecsearch.server import create_app

    root, ix = served_index
    body = _upload(sorted((root / "queries").glob("*.png"))[0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_BACKBONE_DELAY", "0.3")
        with live_server(create_app(ix, warm=False, batch_size=4)) as base, httpx.Client(base_url=base, timeout=30) as c:
            assert c.post("/api/v1/search", files=body).status_code == 200  # measures the model
            slow = threading.Thread(target=lambda: c.post("/api/v1/search", files=body))
            slow.start()
            time.sleep(0.05)
            r = c.post("/api/v1/search", files=body, headers={"X-Request-Timeout": "0.1"})
            slow.join()
            assert r.status_code == 503 and "deadline" in r.json()["error"] and "retry-after" in r.headers
            assert c.post("/api/v1/search", files=body, headers={"X-Request-Timeout": "20"}).status_code == 200
            for bad in ("0", "-1", "abc", "nan", "1e9"):
                r = c.post("/api/v1/search", files=body, headers={"X-Request-Timeout": bad})
                assert r.status_code == 422 and "x-request-timeout" in r.json()["error"].lower(), (bad, r.text)


def test_a_caller_cancelling_its_future_drops_it(batcher_of):
    model = FakeModel()
    model.gate = threading.Event()
    b = batcher_of(model, max_delay=0.01)
    busy = b.submit(pixels(0))
    while not model.calls:
        time.sleep(0.01)
    f = b.submit(pixels(1))
    assert f.cancel()
    model.gate.set()
    busy.result(5)
    b.embed(pixels(2))
    assert model.calls == [1, 1] and b.stats()["dropped"] == 1


def test_an_exception_reaches_every_caller_of_the_batch_and_the_batcher_goes_on(batcher_of):
    model = FakeModel(fail=True)
    model.gate = threading.Event()
    b = batcher_of(model, max_batch=8, max_delay=0.05)
    futures = [b.submit(pixels(i)) for i in range(3)]
    model.gate.set()
    for f in futures:
        with pytest.raises(RuntimeError, match="model broke"):
            f.result(5)
    model.fail = False
    np.testing.assert_array_equal(b.embed(pixels(9)), FakeModel.alone(pixels(9)))


def test_stop_unblocks_waiters(batcher_of):
    model = FakeModel()
    model.gate = threading.Event()
    b = batcher_of(model, max_batch=1)
    running = b.submit(pixels(0))
    while not model.calls:
        time.sleep(0.01)
    waiting = b.submit(pixels(1))
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    with pytest.raises(ServiceBusyError):
        waiting.result(5)  # refused at once, not run
    model.gate.set()
    stopper.join(5)
    assert not stopper.is_alive()
    assert running.result(5).shape == (1, 3)  # the batch in progress finished
    with pytest.raises(ServiceBusyError):
        b.submit(pixels(2))


def test_async_callers_batch_too(batcher_of):
    import asyncio

    model = FakeModel(delay=0.02)
    b = batcher_of(model, max_batch=16, max_delay=0.05)

    async def main():
        return await asyncio.gather(*(b.embed_async(pixels(i)) for i in range(6)))

    outs = asyncio.run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, FakeModel.alone(pixels(i)))
    assert len(model.calls) < 6


def test_index_model_batcher_gives_the_same_vectors(tiny_index):
    ix = tiny_index
    x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    alone = ix.model.embed_pixels(x)
    assert ix.model.batcher is None
    b = ix.model.start_batcher(max_batch=4, max_delay=0.01)
    try:
        with ThreadPoolExecutor(5) as pool:
            rows = list(pool.map(lambda i: ix.model.embed_pixels(x[i : i + 1]), range(5)))
        np.testing.assert_allclose(np.concatenate(rows), alone, atol=1e-5)
        np.testing.assert_allclose(ix.model.embed_pixels(x), alone, atol=1e-5)  # more rows than a batch
        assert b.stats()["rows"] == 10
        with pytest.raises(RequestDroppedError):
            ix.model.embed_pixels(x[:1], deadline=time.monotonic() - 1)
    finally:
        ix.model.stop_batcher()
    assert ix.model.batcher is None


# -- through a real server ----------------------------------------------------------------------
def _upload(path) -> dict:
    return {"file": (path.name, path.read_bytes(), "image/png")}


def test_concurrent_uploads_batch_and_match_one_by_one(served_index):
    from helpers import live_server

    from vecsearch.server import create_app

    root, ix = served_index
    queries = sorted((root / "queries").glob("*.png"))
    uploads = [queries[i % len(queries)] for i in range(16)]
    # A slow model call (TINY_BACKBONE_DELAY is read per call) lets requests pile up behind it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_BACKBONE_DELAY", "0.15")
        with live_server(create_app(ix, warm=False, batch_size=16, batch_delay_ms=20)) as base:
            with httpx.Client(base_url=base, timeout=60) as c:
                alone = {q.name: c.post("/api/v1/search", files=_upload(q), params={"k": 5}).json() for q in queries}

            def one(q):
                with httpx.Client(base_url=base, timeout=60) as c:
                    return q.name, c.post("/api/v1/search", files=_upload(q), params={"k": 5})

            with ThreadPoolExecutor(16) as pool:
                got = list(pool.map(one, uploads))
            with httpx.Client(base_url=base, timeout=60) as c:
                stats = c.get("/api/v1/stats").json()["batcher"]
    assert ix.model.batcher is None  # stopped with the server
    for name, r in got:
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in alone[name]["results"]]
        for a, b in zip(r.json()["results"], alone[name]["results"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert stats["rows"] == stats["rows"] and stats["rows"] >= 16 + len(queries)
    assert stats["rows"] / stats["batches"] > 1, stats


def test_tiny_queue_answers_503_with_retry_after_never_hangs(served_index):
    from helpers import live_server

    from vecsearch.server import create_app

    root, ix = served_index
    q = sorted((root / "queries").glob("*.png"))[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_BACKBONE_DELAY", "0.3")
        with live_server(create_app(ix, warm=False, batch_size=1, max_queue=1)) as base:

            def one(_):
                with httpx.Client(base_url=base, timeout=30) as c:
                    return c.post("/api/v1/search", files=_upload(q))

            t = time.monotonic()
            with ThreadPoolExecutor(12) as pool:
                got = list(pool.map(one, range(12)))
            took = time.monotonic() - t
    codes = sorted(r.status_code for r in got)
    assert set(codes) == {200, 503}, codes
    busy = [r for r in got if r.status_code == 503]
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["type"] == "ServiceBusyError" for r in busy)
    assert took < 15


def test_abandoned_requests_are_dropped_before_their_model_call(served_index):
    from helpers import live_server

    from vecsearch.server import create_app

    root, ix = served_index
    q = sorted((root / "queries").glob("*.png"))[0]
    body = _upload(q)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINY_BACKBONE_DELAY", "0.5")
        with live_server(create_app(ix, warm=False, batch_size=1)) as base:
            host, port = base.removeprefix("http://").split(":")
            request = httpx.Request("POST", f"{base}/api/v1/search", files=body)
            raw = b"".join(
                [
                    f"POST /api/v1/search HTTP/1.1\r\nHost: {host}:{port}\r\n".encode(),
                    b"".join(f"{k}: {v}\r\n".encode() for k, v in request.headers.items() if k.lower() != "host"),
                    b"\r\n",
                    request.read(),
                ]
            )
            socks = []
            # The first holds the model for 0.5 s; 4 wait (the queue's default for batches of 1), the
            # rest are refused; all hang up. A full queue of abandoned requests takes the next one in.
            for _ in range(8):
                s = socket.create_connection((host, int(port)))
                s.sendall(raw)
                socks.append(s)
            time.sleep(0.25)
            for s in socks:
                s.close()
            time.sleep(0.1)
            t = time.monotonic()
            with httpx.Client(base_url=base, timeout=30) as c:
                r = c.post("/api/v1/search", files=body)
                took = time.monotonic() - t
                stats = c.get("/api/v1/stats").json()["batcher"]
    assert r.status_code == 200
    assert stats["dropped"] >= 4, stats
    assert stats["batches"] <= 3, stats  # the held one (and perhaps one that started before the hang-up), then ours
    assert took < 2.0  # not 8 x 0.5 s of abandoned work first


def test_the_server_gives_waiting_requests_threads_and_restores_the_limit(tiny_index, photos):
    import anyio

    from vecsearch.server import create_app

    tiny_index.add([photos])
    app = create_app(tiny_index, threads=3, warm=False, batch_size=4, max_queue=10)

    async def main():
        limiter = anyio.to_thread.current_default_thread_limiter()
        before = limiter.total_tokens
        async with app.router.lifespan_context(app):
            assert limiter.total_tokens == 3 + 10 + 4  # a full queue, not the thread pool, refuses the next request
            assert tiny_index.model.batcher is not None and tiny_index.model.batcher.max_batch == 4
        return before, limiter.total_tokens

    before, after = anyio.run(main)
    assert after == before and tiny_index.model.batcher is None


@pytest.mark.slow
def test_bench_serve_quick_mode_prints_the_table(tmp_path):
    """scripts/bench_serve.py in its quick mode (tiny backbone, small counts): every row of the table comes out."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    args = ["--backbone", "tiny", "--no-baseline", "--vectors", "60", "--real", "4", "--levels", "1,2", "--embed-levels", "1"]
    args += ["--seconds", "0.5", "--requests", "10", "--model-images", "4", "--abandon", "4", "--embed-images", "4"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_serve.py"), *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for line in (
        "model CPU per image in-process: batch 1",
        "POST /search",
        "POST /embed",
        "gave up after",
        "non-model, non-decode",
    ):
        assert line in out, out
    assert "peak RSS" in out and "errors" in out
