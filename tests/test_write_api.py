"""The write API against real `vecsearch serve` processes: uploads (indexed, duplicate, failed),
paths under allowed roots, remove, labels and training, tokens, a read-only index, a server
killed in a burst of adds, and a CLI `index` writing at the same time."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from helpers import index_in_subprocess, live_server, make_image, png_header_only, start_serve, wait_until_serving  # noqa: E402

READ, ADMIN = "read-token", "admin-token"
V1 = "/api/v1"


def image_bytes(tmp: Path, seed: int, fmt: str = "png", size=(48, 40)) -> bytes:
    return make_image(tmp / f"u{seed}.{fmt}", seed=seed, size=size).read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_of(*items: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


def build_index(root: Path, n: int = 6) -> Path:
    """`n` photos in root/photos indexed (tiny backbone) into root/index; the index folder."""
    from vecsearch import open_index

    for i in range(n):
        make_image(root / "photos" / f"p{i:02d}.jpg", seed=i)
    with open_index(root / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([root / "photos"])
    return root / "index"


class Server:
    """A `vecsearch serve` subprocess and an httpx client on it (admin token by default)."""

    def __init__(self, index: Path, *args, env=None, token: str | None = ADMIN):
        self.index, self.args, self.env = index, args, env
        self.proc, self.port = start_serve(index, env=env, args=args)
        wait_until_serving(self.proc, self.port)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=60, headers={"Authorization": f"Bearer {token}"} if token else {})

    def restart(self) -> None:
        self.proc, _ = start_serve(self.index, env=self.env, args=self.args, port=self.port)
        wait_until_serving(self.proc, self.port)

    def add(self, *items: tuple[str, bytes], **kw) -> httpx.Response:
        return self.http.post(f"{V1}/images", files=files_of(*items), **kw)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except Exception:  # noqa: BLE001
                self.proc.kill()
        self.proc.communicate()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(root, server): a 6-photo index served with a read and an admin token, root/allowed allowed."""
    root = tmp_path_factory.mktemp("writes")
    index = build_index(root)
    for i in range(3):
        make_image(root / "allowed" / "set" / f"a{i}.jpg", seed=300 + i)
    make_image(root / "outside" / "o.jpg", seed=400)
    (root / "allowed" / "link").symlink_to(root / "outside")
    server = Server(index, "--allow-root", root / "allowed", env={"VECSEARCH_TOKEN": READ, "VECSEARCH_ADMIN_TOKEN": ADMIN})
    yield root, server
    server.stop()


def opened(index: Path):
    from vecsearch import open_index

    return open_index(index, read_only=True)


def test_uploads_are_indexed_once_and_bad_ones_fail_with_their_reason(site, tmp_path):
    root, s = site
    good, jpg = image_bytes(tmp_path, 1000), image_bytes(tmp_path, 1001, "jpg")
    truncated = jpg[: len(jpg) // 2]
    r = s.add(("../../etc/a.png", good), ("b.jpg", jpg), ("empty.jpg", b""), ("notes.txt", b"hello"), ("cut.jpg", truncated))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["indexed"], body["duplicates"], body["failed"]) == (2, 0, 3)
    a, b, empty, text, cut = body["items"]
    assert a["status"] == b["status"] == "indexed" and a["name"] == "a.png"  # the name is text, never a path
    assert a["sha256"] == sha(good) and a["path"].endswith(f"uploads/{sha(good)[:2]}/{sha(good)}.png")
    assert b["path"].endswith(f"{sha(jpg)}.jpg") and Path(b["path"]).read_bytes() == jpg
    assert Path(a["path"]).parent.parent == (s.index / "uploads").resolve()
    assert [x["status"] for x in (empty, text, cut)] == ["failed"] * 3
    assert "empty" in empty["reason"] and "not an image" in text["reason"] and cut["reason"] and cut["id"] is None
    # The same bytes again: the same ids, nothing new.
    again = s.add(("again.png", good), ("b.jpg", jpg)).json()
    assert [(i["status"], i["id"]) for i in again["items"]] == [("duplicate", a["id"]), ("duplicate", b["id"])]
    assert again["generation"] == body["generation"]
    # Searchable at once, and the stored vector is the one the library makes of those bytes.
    hit = s.http.post(f"{V1}/search", files=files_of(("q.png", good)), params={"k": 1}).json()["results"][0]
    assert hit["id"] == a["id"] and hit["score"] > 0.9999
    with opened(s.index) as ix:
        for item, data in ((a, good), (b, jpg)):
            assert float(np.dot(ix.vector(item["id"]), ix.embed_bytes(data))) >= 0.9999


def test_bad_requests_are_4xx(site, tmp_path):
    _, s = site
    r = s.http.post(f"{V1}/images", data={"x": "1"}, files={"other": ("a", b"x")})
    assert r.status_code == 422, r.text
    too_many = [(f"{i}.png", image_bytes(tmp_path, 2000 + (i % 2))) for i in range(65)]
    assert s.add(*too_many).status_code == 422
    big = png_header_only(10, 10) + b"\0" * (21 * 1024 * 1024)
    r = s.add(("big.png", big), ("fine.png", image_bytes(tmp_path, 2002)))
    assert r.status_code == 200 and [i["status"] for i in r.json()["items"]] == ["failed", "indexed"]
    assert "cap" in r.json()["items"][0]["reason"]
    assert s.http.post(f"{V1}/images", files=files_of(("a.png", b"x")), params={"bogus": 1}).status_code == 422
    bomb = png_header_only(20000, 20000)
    assert s.add(("bomb.png", bomb)).json()["items"][0]["reason"].startswith("too large")


def test_concurrent_uploads_equal_one_by_one(site, tmp_path):
    """8 uploads at once: the vectors and search results a clean index adding them one at a time gets."""
    from vecsearch import open_index

    root, s = site
    datas = [image_bytes(tmp_path, 3000 + i, "jpg" if i % 2 else "png") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda d: s.add(("x", d)), datas))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    ids = [a.json()["items"][0]["id"] for a in answers]
    assert all(a.json()["items"][0]["status"] == "indexed" for a in answers) and len(set(ids)) == 8
    ref_dir = tmp_path / "ref"
    shutil.copytree(s.index, ref_dir, ignore=shutil.ignore_patterns("uploads"))  # the same index...
    with open_index(ref_dir) as ref, opened(s.index) as ix:
        # ...minus the 8 (and their stored copies), then added one by one
        ref.remove_ids([i for i in ids if i in {r.id for r in ref}])
        for d in datas:
            assert ref.add_bytes([("x", d)])[0]["status"] == "indexed"
        by_sha = {r.sha256: r.id for r in ref}
        for i, d in zip(ids, datas, strict=True):
            assert float(np.dot(ix.vector(i), ref.vector(by_sha[sha(d)]))) >= 0.9999
        for d in datas:
            served = s.http.post(f"{V1}/search", files=files_of(("q", d)), params={"k": 5}).json()["results"]
            want = ref.search(d, 5)
            assert [ix.image(h["id"]).sha256 for h in served] == [ref.image(h.id).sha256 for h in want]


def test_delete_removes_the_upload_copy_and_never_another_file(site, tmp_path):
    root, s = site
    up = s.add(("d.png", image_bytes(tmp_path, 4000))).json()["items"][0]
    r = s.http.delete(f"{V1}/images/{up['id']}")
    assert r.json() == {"id": up["id"], "path": up["path"], "removed": True, "deleted_file": True}
    assert not Path(up["path"]).exists()
    assert s.http.get(f"{V1}/images/{up['id']}").status_code == 404
    assert s.http.delete(f"{V1}/images/{up['id']}").status_code == 404
    photo = s.http.get(f"{V1}/images", params={"limit": 500}).json()["items"]
    kept = next(p for p in photo if "/photos/" in p["path"] and p["status"] == "ok")
    assert s.http.delete(f"{V1}/images/{kept['id']}").json()["deleted_file"] is False
    assert Path(kept["path"]).exists()


def test_labels_then_a_knn_classifier_over_http_matches_the_library(site, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    root, s = site
    assert s.http.post(f"{V1}/classifiers", json={"kind": "knn", "k": 1, "name": "web"}).status_code == 422  # no labels yet
    ids = [s.add((f"l{i}.png", image_bytes(tmp_path, 5000 + i))).json()["items"][0]["id"] for i in range(6)]
    for n, i in enumerate(ids[:4]):
        r = s.http.put(f"{V1}/images/{i}/label", json={"label": "cat" if n % 2 else "dog", "split": None})
        assert r.status_code == 200 and r.json() == {"id": i, "label": "cat" if n % 2 else "dog", "split": None}
    assert s.http.put(f"{V1}/images/{ids[4]}/label", json={"label": "tmp", "split": "test"}).json()["split"] == "test"
    assert s.http.delete(f"{V1}/images/{ids[4]}/label").json() == {"id": ids[4], "label": None}
    assert s.http.get(f"{V1}/images/{ids[4]}").json()["user_label"] is None
    assert s.http.put(f"{V1}/images/999999/label", json={"label": "x"}).status_code == 404
    assert s.http.put(f"{V1}/images/{ids[0]}/label", json={"label": "x", "split": "val"}).status_code == 422
    r = s.http.post(f"{V1}/classifiers", json={"kind": "knn", "k": 1, "name": "web"})
    assert r.status_code == 200, r.text
    served = {p["id"]: p["label"] for p in r.json()["predictions"]}
    with opened(s.index) as ix:
        labelled = {i: lab for i, lab, _, _ in ix.store.user_labels()}
        assert labelled == {ids[0]: "dog", ids[1]: "cat", ids[2]: "dog", ids[3]: "cat"}
        X = np.stack([ix.vector(i) for i in labelled])
        knn = KNeighborsClassifier(1, metric="cosine").fit(X, list(labelled.values()))
        for i, label in served.items():
            assert knn.predict(ix.vector(i)[None])[0] == label
    assert len(served) == len([r for r in s.http.get(f"{V1}/images", params={"status": "ok", "limit": 500}).json()["items"]]) - 4


def test_paths_only_under_the_allowed_roots(site):
    root, s = site
    r = s.http.post(f"{V1}/images/paths", json={"paths": [str(root / "allowed" / "set")]})
    assert r.status_code == 200, r.text
    assert r.json()["indexed"] == 3
    assert s.http.post(f"{V1}/images/paths", json={"paths": [str(root / "outside")]}).status_code == 403
    assert s.http.post(f"{V1}/images/paths", json={"paths": [str(root / "allowed" / "link")]}).status_code == 403
    assert s.http.post(f"{V1}/images/paths", json={"paths": [str(root / "allowed" / ".." / "outside")]}).status_code == 403
    assert s.http.post(f"{V1}/images/paths", json={"paths": ["allowed/set"]}).status_code == 422
    assert s.http.post(f"{V1}/images/paths", json={"paths": []}).status_code == 422


def test_tokens_read_cannot_write_and_none_cannot_read(site, tmp_path):
    _, s = site
    data = image_bytes(tmp_path, 6000)
    with httpx.Client(base_url=s.base, timeout=30) as anon:
        assert anon.get(f"{V1}/images").status_code == 401
        assert anon.post(f"{V1}/images", files=files_of(("a", data))).status_code == 401
        reader = {"Authorization": f"Bearer {READ}"}
        assert anon.get(f"{V1}/images", headers=reader).status_code == 200
        for call in (
            lambda: anon.post(f"{V1}/images", files=files_of(("a", data)), headers=reader),
            lambda: anon.delete(f"{V1}/images/1", headers=reader),
            lambda: anon.put(f"{V1}/images/1/label", json={"label": "x"}, headers=reader),
            lambda: anon.post(f"{V1}/classifiers", json={"kind": "knn"}, headers=reader),
            lambda: anon.post("/api/images", files=files_of(("a", data)), headers=reader),  # the alias too
        ):
            assert call().status_code == 403


def test_writes_off_is_403_and_a_read_only_index_is_409(tmp_path):
    from vecsearch import open_index
    from vecsearch.server import create_app

    index = build_index(tmp_path, n=3)
    data = image_bytes(tmp_path, 7000)
    with open_index(index) as ix, live_server(create_app(ix, warm=False)) as base:
        r = httpx.post(f"{base}{V1}/images", files=files_of(("a", data)))
        assert r.status_code == 403 and "Writes are off" in r.json()["error"]
    with open_index(index, read_only=True) as ix, live_server(create_app(ix, warm=False, allow_writes=True)) as base:
        for r in (
            httpx.post(f"{base}{V1}/images", files=files_of(("a", data))),
            httpx.delete(f"{base}{V1}/images/1"),
            httpx.put(f"{base}{V1}/images/1/label", json={"label": "x"}),
        ):
            assert r.status_code == 409 and "read-only" in r.json()["error"], r.text
        assert not (index / "uploads").exists()


def test_group_commit_gathers_concurrent_writes_and_answers_each_its_own():
    from vecsearch.uploads import GroupCommit

    calls: list[list] = []

    def run(items: list) -> list:
        calls.append(items)
        time.sleep(0.2)  # a commit in progress: the others gather meanwhile
        if "boom" in items:
            raise RuntimeError("boom")
        return [x * 10 for x in items]

    group = GroupCommit(run)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: group.submit([i, i + 100]), range(8)))
    assert answers == [[i * 10, (i + 100) * 10] for i in range(8)]
    assert len(calls) < 8 and sorted(x for c in calls for x in c) == sorted([*range(8), *range(100, 108)])
    with pytest.raises(RuntimeError, match="boom"):
        group.submit(["boom"])
    assert group.submit([1]) == [10]  # a failed group leaves the next one unharmed


def _burst(s: Server, datas: list[bytes], threads: int, stop: threading.Event, busy: list | None = None) -> dict[str, int]:
    """Post the uploads from several threads until told to stop; {sha: id} of those answered 2xx
    (a 503 is retried after a pause, and noted in `busy`)."""
    done: dict[str, int] = {}
    lock = threading.Lock()
    todo = list(enumerate(datas))

    def worker() -> None:
        with httpx.Client(base_url=s.base, timeout=30, headers=s.http.headers) as c:
            while not stop.is_set():
                with lock:
                    if not todo:
                        return
                    _, d = todo.pop()
                try:
                    r = c.post(f"{V1}/images", files=files_of(("b", d)))
                except httpx.TransportError:
                    return
                if r.status_code == 503:
                    assert r.headers["Retry-After"] == "5"
                    if busy is not None:
                        busy.append(1)
                    time.sleep(0.2)
                    with lock:
                        todo.append((0, d))
                    continue
                if r.is_success:
                    with lock:
                        done[sha(d)] = r.json()["items"][0]["id"]

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    return done


@pytest.mark.slow
def test_sigkill_during_a_burst_keeps_every_acknowledged_add(tmp_path):
    from vecsearch import open_index
    from vecsearch.health import check_index

    index = build_index(tmp_path, n=4)
    s = Server(index, "--allow-writes", token=None)
    datas = [image_bytes(tmp_path, 8000 + i, "jpg" if i % 3 else "png") for i in range(80)]
    stop = threading.Event()
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(_burst(s, datas, 4, stop)))
    t.start()
    deadline = time.monotonic() + 30
    while len(list((index / "uploads").glob("*/*"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(s.proc.pid, signal.SIGKILL)
    stop.set()
    t.join(60)
    s.proc.communicate()
    acked = dict(box)
    print(f"acknowledged before the kill: {len(acked)} of {len(datas)}")
    assert 0 < len(acked) < len(datas), "the kill came before any add was answered, or after all"
    s.restart()
    try:
        assert s.http.get(f"{V1}/health").status_code == 200
        with opened(index) as ix:
            report = check_index(index)
            assert report.ok, report
            stored = {r.sha256: r for r in ix if r.status == "ok"}
            for h, i in acked.items():
                assert stored[h].id == i and Path(stored[h].path).exists()
            uploads = {r.sha256 for r in stored.values() if "/uploads/" in r.path}
            for h in uploads:  # each entry's stored copy is whole: its bytes hash to its name
                assert sha(Path(stored[h].path).read_bytes()) == h and Path(stored[h].path).stem == h
            assert not [r for r in ix if r.status != "ok"]  # no upload left as a failed or partial row
            # every indexed upload is a whole, searchable image equal to a clean index of the same bytes
            with open_index(tmp_path / "clean", backbone="tiny", weights=None, seed=7) as clean:
                clean.add([tmp_path / "photos"])
                by_sha = {sha(d): d for d in datas}
                clean.add_bytes([("x", by_sha[h]) for h in sorted(uploads)])
                for h in sorted(uploads)[:10]:
                    served = s.http.post(f"{V1}/search", files=files_of(("q", by_sha[h])), params={"k": 4}).json()["results"]
                    assert served[0]["id"] == stored[h].id
                    assert [ix.image(x["id"]).sha256 for x in served] == [
                        clean.image(x.id).sha256 for x in clean.search(by_sha[h], 4)
                    ]
    finally:
        s.stop()


@pytest.mark.slow
def test_a_cli_index_and_http_adds_at_once_end_with_both(tmp_path):
    index = build_index(tmp_path, n=2)
    for i in range(30):
        make_image(tmp_path / "more" / f"m{i:02d}.jpg", seed=9000 + i)
    s = Server(index, "--allow-writes", token=None)
    try:
        datas = [image_bytes(tmp_path, 9500 + i, size=(24, 20)) for i in range(200)]
        box: dict = {}
        busy: list = []
        stop = threading.Event()  # HTTP adds go on for as long as the CLI runs
        t = threading.Thread(target=lambda: box.update(_burst(s, datas, 3, stop, busy)))
        t.start()
        for _ in range(5):  # the CLI refuses at once while an HTTP commit holds the lock: an operator runs it again
            cli = index_in_subprocess(tmp_path / "more", index)
            err = cli.communicate(timeout=120)[1].decode()
            if cli.returncode == 0 or "Another vecsearch run is writing" not in err:
                break
        stop.set()
        t.join(60)
        assert cli.returncode == 0, err
        acked = dict(box)
        print(f"HTTP adds answered: {len(acked)}, 503 while the CLI wrote: {len(busy)}")
        assert acked
        with opened(index) as ix:
            records = {r.sha256: r for r in ix if r.status == "ok"}
            paths = {r.path for r in ix}
        assert all(records[h].id == i for h, i in acked.items())
        assert {str(p) for p in (tmp_path / "more").iterdir()} <= paths
    finally:
        s.stop()


def test_a_held_writer_lock_makes_a_write_wait_then_503(site, tmp_path):
    from vecsearch.config import LOCK_NAME
    from vecsearch.files import WriterLock

    _, s = site
    data = image_bytes(tmp_path, 9900)
    with WriterLock(s.index / LOCK_NAME).held():  # as a CLI run in another process holds it
        started = time.monotonic()
        r = s.add(("a.png", data))
        waited = time.monotonic() - started
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    assert 4.5 < waited < 15 and "writing" in r.json()["error"]
    assert s.add(("a.png", data)).json()["items"][0]["status"] == "indexed"


def test_an_upload_is_stored_as_the_indexer_stores_the_same_file(tmp_path):
    """The same bytes added as an upload (through the batcher, as the server does) and indexed from a folder:
    the same unit vector and the same raw pooled length (what `label` needs for the ImageNet top)."""
    from vecsearch import open_index

    files = [make_image(tmp_path / "photos" / f"p{i}.png", seed=900 + i) for i in range(3)]
    with open_index(tmp_path / "by-folder", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "photos"])
        ids, want, want_norms = ix.store.vectors(dim=ix.info.dim)
    with open_index(tmp_path / "by-upload", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([files[0]])  # records the model
        ix.model.start_batcher(max_batch=4)
        try:
            items = ix.add_bytes([(f.name, f.read_bytes()) for f in files[1:]])
        finally:
            ix.model.stop_batcher()
        assert [i["status"] for i in items] == ["indexed", "indexed"]
        _, got, got_norms = ix.store.vectors(dim=ix.info.dim)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(got_norms, want_norms, rtol=1e-5)
    assert np.all(np.isfinite(got_norms)) and np.all(got_norms > 0)
