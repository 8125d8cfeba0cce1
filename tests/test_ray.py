"""The Ray engine (`--engine ray`) and Parquet shards (`embed --out`, `import DIR`), on a local
Ray cluster of 2 CPUs that this module starts once.

The reference is the in-process engine: the same files give the same vectors, sizes and
failure reasons whichever engine embeds them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import image_rows, index_in_subprocess, make_image, run, run_json

from vecsearch import open_index
from vecsearch.errors import VecsearchError

ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (the ray extra)")
pytest.importorskip("ray.data", reason="the Ray engine needs ray[data] (the ray extra)")

TESTS = Path(__file__).parent
TINY = ("--backbone", "tiny", "--weights", "none", "--seed", "7")
DELAY = "0.1"
"""Seconds each tiny-model batch sleeps on the workers, so a driver can be killed mid-run."""


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs; its workers import the tiny backbone from this folder. Yields its address."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TINY_BACKBONE_DELAY")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["TINY_BACKBONE_DELAY"] = DELAY  # read by the model actors only (the driver's env has it too)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        configure_logging=False,
        log_to_driver=False,
    )
    os.environ["TINY_BACKBONE_DELAY"] = saved["TINY_BACKBONE_DELAY"] or "0"
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _folder(root: Path, n: int) -> list[Path]:
    """n small images plus two files that cannot be decoded."""
    paths = [make_image(root / f"{i // 10}" / f"im{i:03d}.png", seed=i, size=(40, 30)) for i in range(n)]
    (root / "bad.jpg").write_bytes(b"not an image at all")
    good = paths[0].read_bytes()
    (root / "cut.png").write_bytes(good[: len(good) // 2])
    return paths


def _snapshot(index: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({path: stored vector}, {failed path: reason}) of an index, read back through the API."""
    ix = open_index(index, create=False)
    try:
        ids, mat, _ = ix.store.vectors()
        recs = ix.store.images(ids)
        assert ix.searcher.map.ids.tolist() == ids.tolist(), "the searcher and SQLite disagree"
        return ({recs[int(i)].path: v for i, v in zip(ids, mat, strict=False)}, {r.path: r.reason for r in ix.failed()})
    finally:
        ix.close()


def _same_index(a: Path, b: Path) -> None:
    va, fa = _snapshot(a)
    vb, fb = _snapshot(b)
    assert sorted(va) == sorted(vb) and fa == fb
    cos = np.array([float(np.dot(va[p], vb[p])) for p in va])
    assert cos.min() >= 0.9999, cos.min()


def test_missing_ray_says_how_to_install(monkeypatch, tmp_path):
    import re

    from vecsearch import ray_engine
    from vecsearch.extras import install_line

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(VecsearchError, match=re.escape(install_line("ray"))):
        ray_engine.import_ray()
    # The CLI says so before walking or building anything.
    monkeypatch.setattr(ray_engine.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else object())
    r = run("index", TESTS / "data", "--index", tmp_path / "ix", "--engine", "ray", ok=False)
    assert r.exit_code == 1 and install_line("ray") in r.output
    assert not (tmp_path / "ix" / "index.db").exists()


@pytest.mark.slow
def test_ray_engine_gives_the_local_vectors_and_reasons(cluster, tmp_path):
    from vecsearch.backbones import load_backbone

    root = tmp_path / "photos"
    _folder(root, 24)
    # A weights FILE (the other tests use the seeded init): the workers load the same file.
    weights = tmp_path / "tiny.weights.h5"
    load_backbone("tiny", None).model.save_weights(str(weights))  # another init than seed 7
    model = ("--backbone", "tiny", "--weights", weights)
    local, remote = tmp_path / "local", tmp_path / "remote"
    a = run_json("index", root, "--index", local, *model, "--batch-size", "4")
    b = run_json(
        "index",
        root,
        "--index",
        remote,
        *model,
        "--batch-size",
        "4",
        "--engine",
        "ray",
        "--ray-address",
        cluster,
        "--workers",
        "1",
    )
    assert (b["indexed"], len(b["failed"]), b["total"]) == (24, 2, 26)
    assert sorted((f["path"], f["reason"]) for f in b["failed"]) == sorted((f["path"], f["reason"]) for f in a["failed"])
    assert {Path(f["path"]).name for f in b["failed"]} == {"bad.jpg", "cut.png"}
    _same_index(local, remote)
    ix = open_index(remote, create=False)
    try:  # the file facts come from the workers' reads: sizes and hashes as the local engine records them
        ok = {r.path: (r.sha256, r.width, r.height) for r in ix.images(limit=100)[1] if r.status == "ok"}
    finally:
        ix.close()
    ix = open_index(local, create=False)
    try:
        assert ok == {r.path: (r.sha256, r.width, r.height) for r in ix.images(limit=100)[1] if r.status == "ok"}
    finally:
        ix.close()
    again = run_json("index", root, "--index", remote, "--engine", "ray", "--ray-address", cluster)
    assert (again["indexed"], again["unchanged"], len(again["failed"])) == (0, 24, 2)


def test_a_pool_the_cluster_cannot_hold_is_refused(cluster, tmp_path):
    from vecsearch.ray_engine import ModelRecipe, RayEngine

    paths = _folder(tmp_path / "p", 2)
    recipe = ModelRecipe.for_model("tiny", None, seed=7)
    with pytest.raises(VecsearchError, match="need 1 GPUs; the Ray cluster has 0"):
        list(RayEngine(recipe, address=cluster, gpus_per_worker=1).embed_files(paths))
    with pytest.raises(VecsearchError, match="2 model actors take 2 CPUs and decoding needs 0.5 more"):
        list(RayEngine(recipe, address=cluster, workers=2).embed_files(paths))


def test_engine_flags_are_checked(tmp_path):
    r = run("index", tmp_path, "--index", tmp_path / "ix", "--engine", "spark", ok=False)
    assert r.exit_code == 1 and "Unknown engine 'spark'" in r.output
    r = run("index", tmp_path, "--index", tmp_path / "ix", "--ray-address", "auto", ok=False)
    assert r.exit_code == 1 and "go with --engine ray" in r.output


# -- joining a head started with `ray start --head`, as docs/service.md's recipe does ------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (this one may hold a Ray connection), with no RAY_* settings but `env`'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; app({[str(a) for a in args]!r})"
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env={**clean, "TINY_BACKBONE_DELAY": "0", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def token_head(tmp_path_factory):
    """A head node from `ray start --head --block` with token auth, its token in its own HOME; yields (port, home).

    Its own temp dir and ports, so it meets no other Ray on the machine; stopped by signalling
    its process group (`ray stop` would stop every Ray here).
    """
    import shutil
    import tempfile

    if not hasattr(ray.exceptions, "AuthenticationError"):
        pytest.skip(f"Ray {ray.__version__} has no token authentication (2.52+)")
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("vecsearch-test-token-" + os.urandom(8).hex())
    temp = tempfile.mkdtemp(prefix="vsray", dir="/tmp")  # Ray's socket paths must stay under 107 characters
    port = _free_port()
    flags = {
        "--port": port,
        "--ray-client-server-port": _free_port(),
        "--dashboard-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
    }
    log = home / "head.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    pythonpath = os.pathsep.join([str(TESTS), str(TESTS.parent), clean.get("PYTHONPATH", "")])
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ray.scripts.scripts",
                "start",
                "--head",
                "--block",
                "--num-cpus",
                "2",
                "--object-store-memory",
                str(200 * 2**20),
                "--temp-dir",
                temp,
                "--include-dashboard=false",
                "--disable-usage-stats",
                *(str(x) for kv in flags.items() for x in kv),
            ],
            env={**clean, "HOME": str(home), "RAY_AUTH_MODE": "token", "PYTHONPATH": pythonpath, "TINY_BACKBONE_DELAY": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield port, home
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head drains and stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # what outlived the drain (agents)
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # starts its own head node (~15 s) and a model actor on it
def test_a_head_that_wants_a_token_says_to_set_ray_auth_mode(token_head, tmp_path):
    port, home = token_head
    root = tmp_path / "photos"
    _folder(root, 6)
    # 127.0.0.1, as one types it on the head: Ray dials this machine's address instead, where the head listens too.
    ray_flags = ("--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--workers", "1")
    r = _cli("index", root, "--index", tmp_path / "ix", *TINY, *ray_flags, env={"HOME": str(home)})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "requires an auth token" in r.stderr and "Set RAY_AUTH_MODE=token" in r.stderr, r.stderr[-3000:]
    assert f"this machine has one in {home / '.ray' / 'auth_token'}" in r.stderr  # the token it would send
    assert "InvalidAuthToken" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    # A token that is not the head's is named as such.
    r = _cli(
        "index",
        root,
        "--index",
        tmp_path / "ix",
        *TINY,
        *ray_flags,
        env={"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"},
    )
    assert r.returncode == 1 and "refused the auth token from RAY_AUTH_TOKEN" in r.stderr, r.stderr[-3000:]
    assert "InvalidAuthToken" not in r.stderr
    # With RAY_AUTH_MODE=token, Ray sends the token from ~/.ray/auth_token and the job runs on the head.
    r = _cli(
        "index",
        root,
        "--index",
        tmp_path / "ix",
        *TINY,
        *ray_flags,
        "--batch-size",
        "4",
        "--json",
        env={"HOME": str(home), "RAY_AUTH_MODE": "token"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert (summary["indexed"], len(summary["failed"])) == (6, 2)
    assert "InvalidAuthToken" not in r.stderr


def test_nothing_listening_at_the_address_is_said_at_once(tmp_path):
    """Where nothing answers, ray.init would retry for minutes; the check before it answers in seconds."""
    port = _free_port()
    _folder(tmp_path / "p", 2)
    r = _cli(
        "index",
        tmp_path / "p",
        "--index",
        tmp_path / "ix",
        *TINY,
        "--engine",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
        env={},
        timeout=120,
    )
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"Nothing answers at 127.0.0.1:{port}" in r.stderr and f"`ray start --head`, on port {port}" in r.stderr
    assert "--ray-address" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]


def _index_in_subprocess(root: Path, index: Path, address: str | None) -> subprocess.Popen:
    engine = ["--engine", "ray", "--ray-address", address, "--workers", "1"] if address else []
    return index_in_subprocess(root, index, *engine, env={"TINY_BACKBONE_DELAY": "0"})


@pytest.mark.slow
def test_sigkilled_ray_driver_resumes_to_the_clean_index(cluster, tmp_path):
    root = tmp_path / "many"
    _folder(root, 120)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    local = _index_in_subprocess(root, clean, None)  # the reference: the in-process engine, never killed
    proc = _index_in_subprocess(root, killed, cluster)
    deadline = time.monotonic() + 120
    while image_rows(killed) < 64 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < image_rows(killed) < 122, "the run was not killed mid-way"
    assert local.wait(timeout=300) == 0, local.stderr.read().decode()[-2000:]

    rerun = _index_in_subprocess(root, killed, cluster)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-2000:]
    _same_index(clean, killed)
    assert len(_snapshot(killed)[0]) == 120


# -- embed --out DIR: shards, then import ---------------------------------------------------------
@pytest.mark.slow
def test_ray_shards_round_trip_through_import(cluster, tmp_path, monkeypatch):
    from vecsearch import ray_engine

    monkeypatch.setattr(ray_engine, "WINDOW", 20)  # two Ray Data runs, results still in order for the shards
    root = tmp_path / "photos"
    _folder(root, 30)
    shards, direct, imported = tmp_path / "shards", tmp_path / "direct", tmp_path / "imported"
    s = run_json(
        "embed",
        root,
        "--out",
        shards,
        *TINY,
        "--batch-size",
        "4",
        "--shard-size",
        "8",
        "--engine",
        "ray",
        "--ray-address",
        cluster,
        "--workers",
        "1",
    )
    assert (s["files"], s["shards"], s["written"], s["embedded"], s["failed"]) == (32, 4, 4, 30, 2)
    assert len(list(shards.glob("shard-*.parquet"))) == 4
    run_json("index", root, "--index", direct, *TINY, "--batch-size", "4")
    i = run_json("import", shards, "--index", imported)
    assert (i["imported"], i["failed"]) == (30, 2)
    _same_index(direct, imported)  # same vectors, same failed files with the same reasons
    # The shards carried sizes and mtimes: indexing the folder afterwards embeds nothing.
    again = run_json("index", root, "--index", imported)
    assert (again["indexed"], again["unchanged"], len(again["failed"])) == (0, 30, 2)


def test_shards_resume_shard_by_shard(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "photos"
    paths = _folder(root, 20)
    out = tmp_path / "shards"
    first = run_json("embed", root, "--out", out, *TINY, "--shard-size", "5")
    assert (first["shards"], first["written"], first["kept"]) == (5, 5, 0)
    names = sorted(p.name for p in out.glob("shard-*.parquet"))
    before = {n: pq.read_table(out / n) for n in names}
    # A run killed after some shards: the others are whole, the missing one is written again,
    # and the temp file of the one being written when it died is cleared.
    (out / names[2]).unlink()
    (out / f".{names[2]}.k3x9q2.tmp").write_bytes(b"half a shard")
    second = run_json("embed", root, "--out", out, *TINY, "--shard-size", "5")
    assert (second["written"], second["kept"], second["removed"], second["embedded"]) == (1, 4, 0, 5)
    assert pq.read_table(out / names[2]).equals(before[names[2]])
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.json"])
    # A changed file redoes its shard only; the outdated one goes.
    make_image(paths[0], seed=999, size=(40, 30))
    third = run_json("embed", root, "--out", out, *TINY, "--shard-size", "5")
    assert (third["written"], third["kept"], third["removed"]) == (1, 4, 1)
    assert len(list(out.glob("shard-*.parquet"))) == 5
    # Every file is in exactly one shard, its failures with their reasons.
    rows = [r for n in sorted(out.glob("shard-*.parquet")) for r in pq.read_table(n).to_pylist()]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in [*paths, root / "bad.jpg", root / "cut.png"])
    failed = {Path(r["path"]).name: r for r in rows if r["reason"] is not None}
    assert set(failed) == {"bad.jpg", "cut.png"} and all(r["vector"] is None for r in failed.values())
    from vecsearch import embed_job
    from vecsearch.cli import embed

    assert embed.SHARD_SIZE == embed_job.SHARD_SIZE  # the CLI's default, kept light for --help
    # Another model's shards never mix into the folder.
    r = run("embed", root, "--out", out, "--backbone", "tiny", "--weights", "none", "--seed", "8", ok=False)
    assert r.exit_code == 1 and "another model" in r.output
    # Nor another job's: its re-run would delete these as outdated.
    r = run("embed", root / "0", "--out", out, *TINY, ok=False)
    assert r.exit_code == 1 and "shards of another job" in r.output
    assert len(list(out.glob("shard-*.parquet"))) == 5


def test_old_export_files_still_import(tmp_path, photos):
    """Files without the shards' reason column (what `export` writes) import as before."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_json("index", photos, "--index", src, *TINY)
    run_json("export", tmp_path / "v.parquet", "--index", src)
    i = run_json("import", tmp_path / "v.parquet", "--index", dst)
    assert (i["imported"], i["failed"]) == (12, 0)
    _same_index(src, dst)


def test_a_worker_with_other_weights_refuses_to_embed():
    """The recipe checks the fingerprint the index records after building, as `open_index` does locally."""
    from vecsearch.errors import IndexMismatchError
    from vecsearch.ray_engine import ModelRecipe

    good = ModelRecipe.for_model("tiny", None, seed=7)
    fp = good.build().fingerprint
    assert ModelRecipe.for_model("tiny", None, seed=7, fingerprint=fp).build().fingerprint == fp
    with pytest.raises(IndexMismatchError, match="not the ones the index records"):
        ModelRecipe.for_model("tiny", None, seed=8, fingerprint=fp).build()
    assert good.plugin == "tiny_backbone" and ModelRecipe.for_model("resnet50").plugin == ""


def test_a_worker_that_cannot_build_the_model_is_one_clear_error(cluster, tmp_path):
    import dataclasses

    from vecsearch.ray_engine import ModelRecipe, RayEngine

    paths = _folder(tmp_path / "p", 3)
    recipe = dataclasses.replace(ModelRecipe.for_model("tiny", None, seed=7), plugin="no_such_backbone_plugin")
    with pytest.raises(VecsearchError, match="Ray job failed: ModuleNotFoundError: No module named 'no_such_backbone_plugin'"):
        list(RayEngine(recipe, address=cluster, workers=1).embed_files(paths))


@pytest.mark.slow
def test_sigkilled_embed_resumes_to_the_clean_shards(tmp_path):
    import pyarrow.parquet as pq

    root = tmp_path / "photos"
    _folder(root, 60)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = ["embed", str(root), "--out", str(killed), *TINY, "--batch-size", "4", "--shard-size", "10", "--quiet"]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; app({args!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TINY_BACKBONE_DELAY": "0.1"},
    )
    deadline = time.monotonic() + 120
    while len(list(killed.glob("shard-*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(list(killed.glob("shard-*.parquet"))) < 7, "the run was not killed mid-way"

    again = run_json("embed", root, "--out", killed, *TINY, "--batch-size", "4", "--shard-size", "10")
    assert again["kept"] >= 2 and again["written"] + again["kept"] == 7
    run_json("embed", root, "--out", clean, *TINY, "--batch-size", "4", "--shard-size", "10")
    names = sorted(p.name for p in clean.glob("shard-*.parquet"))
    assert sorted(p.name for p in killed.iterdir()) == sorted([*names, "manifest.json"])
    for n in names:
        a, b = pq.read_table(clean / n), pq.read_table(killed / n)
        assert a.drop(["vector"]).equals(b.drop(["vector"]))
        for x, y in zip(a["vector"].to_pylist(), b["vector"].to_pylist(), strict=False):
            assert (x is None) == (y is None)  # a failed file has no vector in either
            if x is not None:
                np.testing.assert_allclose(x, y, atol=1e-6)
