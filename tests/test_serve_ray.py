"""`vecsearch serve --engine ray`: the service on Ray Serve, against a real local Ray that the served
CLI process starts itself (two reader replicas and the writer, on this machine's cores).

The reference is the in-process server's app on the same index: the replicas must give its answers.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("ray.serve", reason="serving on Ray needs ray[serve] (the ray extra)")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from helpers import DIM, index_in_subprocess, make_image, run, start_serve  # noqa: E402

from vecsearch import open_index  # noqa: E402

TESTS = Path(__file__).parent
V1 = "/api/v1"
REPLICA = "x-vecsearch-replica"
DELAY = "0.1"
"""Seconds each tiny-model call sleeps in the replicas: requests overlap, so queues fill and batches form."""


def image(tmp: Path, seed: int) -> bytes:
    return make_image(tmp / f"q{seed}.png", seed=seed, size=(48, 40)).read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files(data: bytes, name: str = "q.png") -> list:
    return [("file", (name, data, "image/png"))]


def replica_pids(kind: str) -> set[int]:
    """PIDs of this machine's Serve replicas of deployment `kind` (Ray names their processes so)."""
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:vecsearch:{kind}"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


class RayServer:
    """`vecsearch serve --engine ray --replicas 2 --allow-writes` in a subprocess, with a client on it."""

    def __init__(self, index: Path, *args: str):
        env = {
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TINY_BACKBONE_DELAY": DELAY,
        }
        self.proc, self.port = start_serve(index, env=env, args=("--engine", "ray", *args))
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.communicate())
            try:
                if self.http.get(f"{V1}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the Ray replicas did not come up"
            time.sleep(0.5)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.http.close()
        return err


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, index folder, reference client): the Ray service, and the in-process app on the same index."""
    from vecsearch.server import create_app

    root = tmp_path_factory.mktemp("serve-ray")
    for i in range(10):
        make_image(root / "photos" / f"p{i:02d}.png", seed=i)
    with open_index(root / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([root / "photos"])
    for i in range(2):  # a server-side folder the writer may index by path (--allow-root)
        make_image(root / "served" / f"s{i}.png", seed=700 + i)
    server = RayServer(
        root / "index",
        *("--replicas", "2", "--allow-writes", "--max-ongoing", "4", "--max-queued", "4"),
        *("--allow-root", str(root / "served")),
    )
    reference_ix = open_index(root / "index", create=False, read_only=True)
    try:
        with TestClient(create_app(reference_ix, batch_size=0), base_url="http://127.0.0.1") as reference:
            yield server, root, reference
    finally:
        reference_ix.close()
        err = server.stop()
        assert "Traceback" not in err, err[-3000:]
        assert not replica_pids("reader") and not replica_pids("writer"), "replicas left running after the server stopped"


def on_every_replica(call, expected, tries: int = 40) -> set[str]:
    """Repeat `call` until two readers have answered; each answer must equal `expected`. The readers seen."""
    seen: set[str] = set()
    for _ in range(tries):
        r = call()
        assert r.status_code == 200, r.text
        assert r.json() == expected
        seen.add(r.headers[REPLICA])
        if len(seen) == 2:
            return seen
    raise AssertionError(f"only {seen} answered in {tries} tries")


@pytest.mark.slow
def test_the_replicas_answer_as_the_in_process_server(served):
    server, root, reference = served
    assert len(replica_pids("reader")) == 2 and len(replica_pids("writer")) == 1
    upload = image(root, 100)
    ref = reference.post(f"{V1}/search", files=files(upload), params={"k": 5})
    assert ref.status_code == 200 and len(ref.json()["results"]) == 5
    on_every_replica(lambda: server.http.post(f"{V1}/search", files=files(upload), params={"k": 5}), ref.json())
    ref = reference.get(f"{V1}/images/3/similar", params={"k": 4})
    on_every_replica(lambda: server.http.get(f"{V1}/images/3/similar", params={"k": 4}), ref.json())
    vector = {"vector": np.cos(np.arange(DIM)).tolist()}
    ref = reference.post(f"{V1}/search/vector", json=vector, params={"k": 6})
    on_every_replica(lambda: server.http.post(f"{V1}/search/vector", json=vector, params={"k": 6}), ref.json())
    # Embeddings too: the vectors a replica's model makes are the in-process model's.
    ours = server.http.post(f"{V1}/embed", files=files(upload)).json()
    theirs = reference.post(f"{V1}/embed", files=files(upload)).json()
    assert ours["model"] == theirs["model"]
    a, b = np.array(ours["items"][0]["vector"]), np.array(theirs["items"][0]["vector"])
    assert float(a @ b) >= 0.9999


@pytest.mark.slow
def test_an_add_through_the_writer_is_in_every_replicas_results(served):
    server, root, _ = served
    data = image(root, 200)
    r = server.http.post(f"{V1}/images", files=files(data, "new.png"))
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["status"] == "indexed"
    # At once, on both readers: each checks the index generation before it searches.
    seen: set[str] = set()
    for _ in range(40):
        hit = server.http.post(f"{V1}/search", files=files(data), params={"k": 1})
        assert hit.status_code == 200 and hit.json()["results"][0]["id"] == item["id"], hit.text
        seen.add(hit.headers[REPLICA])
        if len(seen) == 2:
            break
    assert len(seen) == 2
    # The writer answered (a reader cannot write: its index is open read-only), and says it again.
    again = server.http.post(f"{V1}/images", files=files(data, "again.png")).json()["items"][0]
    assert (again["status"], again["id"]) == ("duplicate", item["id"])
    label = server.http.put(f"{V1}/images/{item['id']}/label", json={"label": "mine"})
    assert label.status_code == 200 and label.json()["label"] == "mine"


@pytest.mark.slow
def test_a_cli_index_beside_the_writer_works_and_the_readers_see_it(served):
    """`vecsearch index` in another process on the same folder while HTTP adds go to the writer: both land."""
    server, root, _ = served
    more = [make_image(root / "more" / f"m{i}.png", seed=600 + i).read_bytes() for i in range(6)]
    cli = index_in_subprocess(root / "more", root / "index", env={"TINY_BACKBONE_DELAY": "0.05"})
    upload = image(root, 650)
    item = add_until_acknowledged(str(server.http.base_url), upload, "beside.png", time.monotonic() + 120)
    assert cli.wait(120) == 0, cli.stderr.read() if cli.stderr else ""
    for data in (*more, upload):
        seen: set[str] = set()
        for _ in range(40):
            r = server.http.post(f"{V1}/search", files=files(data), params={"k": 1})
            assert r.status_code == 200 and r.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-5), r.text
            seen.add(r.headers[REPLICA])
            if len(seen) == 2:
                break
        assert len(seen) == 2
    assert item["status"] == "indexed"


@pytest.mark.slow
def test_paths_under_an_allowed_root_are_indexed_by_the_writer(served):
    server, root, _ = served
    r = server.http.post(f"{V1}/images/paths", json={"paths": [str(root / "served")]})
    assert r.status_code == 200 and r.json()["indexed"] == 2, r.text
    outside = server.http.post(f"{V1}/images/paths", json={"paths": [str(root / "photos")]})
    assert outside.status_code == 403 and "not under an allowed root" in outside.json()["error"]
    data = (root / "served" / "s1.png").read_bytes()
    seen: set[str] = set()
    for _ in range(40):
        hit = server.http.post(f"{V1}/search", files=files(data), params={"k": 1})
        assert hit.json()["results"][0]["score"] == pytest.approx(1.0, abs=1e-5), hit.text
        seen.add(hit.headers[REPLICA])
        if len(seen) == 2:
            break
    assert len(seen) == 2


@pytest.mark.slow
def test_metrics_cover_every_replica(served):
    server, _, _ = served
    deadline = time.monotonic() + 30
    while True:
        text = server.http.get("/metrics").text
        names = set(re.findall(r'replica="([^"]+)"', text))
        if sum(n.startswith("reader-") for n in names) == 2 and any(n.startswith("writer-") for n in names):
            break
        assert time.monotonic() < deadline, names
        time.sleep(1)
    assert "vecsearch_requests_total{" in text and "# TYPE vecsearch_requests_total counter" in text


@pytest.mark.slow
def test_a_full_cluster_answers_503_with_retry_after_never_a_hang(served):
    server, root, _ = served
    data = image(root, 300)

    def one(_):
        with httpx.Client(base_url=server.http.base_url, timeout=60) as c:
            return c.post(f"{V1}/search", files=files(data), params={"k": 1})

    t0 = time.monotonic()
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(one, range(40)))
    assert time.monotonic() - t0 < 60
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503}, codes
    refused = [a for a in answers if a.status_code == 503]
    assert refused, "2 replicas x 4 ongoing + 4 queued took 40 at once"
    assert all(a.headers.get("retry-after", "").isdigit() for a in refused), [dict(a.headers) for a in refused]


def add_until_acknowledged(base: str, data: bytes, name: str, deadline: float) -> dict:
    """POST one upload until a 2xx (a killed replica's request fails; adding again is safe). Its item."""
    with httpx.Client(base_url=base, timeout=60) as c:
        while time.monotonic() < deadline:
            try:
                r = c.post(f"{V1}/images", files=files(data, name))
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if 200 <= r.status_code < 300:
                return r.json()["items"][0]
            assert r.status_code in (500, 502, 503), r.text  # a replica gone mid-request, or a full queue
            time.sleep(min(float(r.headers.get("retry-after", "0.5")), 2))
    raise AssertionError(f"{name} was never acknowledged")


def wait_for_replacement(kind: str, before: set[int], count: int, timeout: float = 180) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        now = replica_pids(kind)
        if len(now) == count and now - before:
            return now
        assert time.monotonic() < deadline, f"no new {kind} replica: {now} (before: {before})"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigkilled_replicas_are_replaced_and_no_acknowledged_write_is_lost_or_doubled(served):
    server, root, _ = served
    base = str(server.http.base_url)
    uploads = {f"k{i:02d}.png": image(root, 1000 + i) for i in range(24)}
    acked: dict[str, dict] = {}
    stop = threading.Event()
    searches: list[int] = []

    def search_load():
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                try:
                    searches.append(c.get(f"{V1}/images/1/similar", params={"k": 3}).status_code)
                except httpx.TransportError:
                    searches.append(0)
                time.sleep(0.05)

    def writer_load(names):
        for name in names:
            acked[name] = add_until_acknowledged(base, uploads[name], name, time.monotonic() + 240)
            time.sleep(0.1)

    names = sorted(uploads)
    readers, writers = replica_pids("reader"), replica_pids("writer")
    threads = [threading.Thread(target=search_load) for _ in range(2)]
    threads += [threading.Thread(target=writer_load, args=(names[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        os.kill(sorted(readers)[0], signal.SIGKILL)  # a reader, under load
        new_readers = wait_for_replacement("reader", readers, 2)
        os.kill(next(iter(writers)), signal.SIGKILL)  # then the writer, mid-burst
        wait_for_replacement("writer", writers, 1)
        for t in threads[2:]:
            t.join(300)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert sorted(acked) == names
    # Every acknowledged add is in the index, once; a retried one answered `duplicate` with the same id.
    with open_index(root / "index", create=False, read_only=True) as ix:
        ids, _, _ = ix.store.vectors()
        shas = [r.sha256 for r in ix.store.images(ids).values()]
    for name, item in acked.items():
        assert shas.count(sha(uploads[name])) == 1, name
        assert item["status"] in ("indexed", "duplicate") and item["id"] in set(ids.tolist())
    assert len(shas) == len(set(shas))
    # The replacement serves once its model is built: two readers answer again.
    assert searches.count(200) > 0
    seen: set[str] = set()
    deadline = time.monotonic() + 180
    while len(seen) < 2 and time.monotonic() < deadline:
        r = server.http.get(f"{V1}/images/1/similar", params={"k": 3})
        if r.status_code == 200:
            seen.add(r.headers[REPLICA])
        time.sleep(0.2)
    assert len(seen) == 2 and replica_pids("reader") == new_readers, seen


def test_a_missing_ray_says_how_to_install(monkeypatch, tmp_path):
    from vecsearch.extras import install_line

    make_image(tmp_path / "p" / "a.png", seed=1)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "p"])
    monkeypatch.setitem(sys.modules, "ray", None)
    r = run("serve", "--index", tmp_path / "ix", "--engine", "ray", ok=False)
    assert r.exit_code == 1 and install_line("ray") in r.output and "Traceback" not in r.output


def test_ray_flags_go_with_the_ray_engine(tmp_path):
    make_image(tmp_path / "p" / "a.png", seed=1)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "p"])
    r = run("serve", "--index", tmp_path / "ix", "--replicas", "2", ok=False)
    assert r.exit_code == 1 and "go with --engine ray" in r.output
    r = run("serve", "--index", tmp_path / "ix", "--engine", "ray", "--autoscale", "4", ok=False)
    assert r.exit_code == 1 and "MIN:MAX" in r.output and "--autoscale" in r.output


def _cli(*args, timeout=180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    code = "import tiny_backbone; from vecsearch.cli import app; app(%r)" % [str(a) for a in args]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture()
def tiny_index(tmp_path):
    make_image(tmp_path / "p" / "a.png", seed=1)
    with open_index(tmp_path / "ix", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "p"])
    return tmp_path / "ix"


@pytest.mark.slow
def test_a_ray_address_where_nothing_answers_is_said_at_once(tiny_index):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _cli("serve", "--index", tiny_index, "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--port", "0")
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"Nothing answers at 127.0.0.1:{port}" in r.stderr and "--ray-address" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_pool_the_cluster_cannot_hold_is_refused(tiny_index):
    r = _cli("serve", "--index", tiny_index, "--engine", "ray", "--replicas", "2", "--gpus-per-replica", "1", "--port", "0")
    assert r.returncode == 1, r.stderr[-3000:]
    assert "2 replicas with 1 GPU each need 2 GPUs; the Ray cluster has 0" in r.stderr
    assert "--gpus-per-replica" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_replicas_that_cannot_start_say_why(tiny_index):
    """The driver knows the tiny backbone, the replicas cannot import it: their own error, in one line."""
    code = "import sys; sys.path.insert(0, %r); import tiny_backbone; from vecsearch.cli import app; app(%r)" % (
        str(TESTS),
        ["serve", "--index", str(tiny_index), "--engine", "ray", "--port", "0"],
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "The replicas could not start: No module named 'tiny_backbone'" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
