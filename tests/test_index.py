"""Indexing: incremental runs, moves and copies, bad files, the CLI contract, what a run reports, repair and resume.

Search results against brute force are in test_search.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import image_rows, index_in_subprocess, make_image, run, run_json
from PIL import Image
from typer.testing import CliRunner

from vecsearch import IndexMismatchError, InputNotFoundError, NoImagesError, open_index
from vecsearch.cli import app

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]


# -- the CLI contract ---------------------------------------------------------------------
def test_index_query_stats_export_contract(photos, index_dir, tmp_path):
    s = run_json("index", photos, "--index", index_dir, *TINY)
    assert {"indexed", "unchanged", "removed", "failed", "total"} <= s.keys()
    assert s["indexed"] == 12 and s["total"] == 12 and s["failed"] == [] and s["removed"] == 0

    hits = run_json("query", photos / "a" / "img01.jpg", "--index", index_dir, "--k", 5)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all({"rank", "id", "path", "score"} <= h.keys() for h in hits)
    assert str((photos / "a" / "img01.jpg").resolve()) not in [h["path"] for h in hits]  # itself left out
    assert hits == sorted(hits, key=lambda h: -h["score"])

    st = run_json("stats", "--index", index_dir)
    assert st["images"] == 12 and st["vectors"] == 12 and st["failed"] == 0
    assert st["backbone"] == "tiny" and st["dim"] == 32

    out = tmp_path / "vecs.npz"
    run("export", out, "--index", index_dir)
    data = np.load(out)
    assert data["vectors"].shape == (12, 32) and len(data["ids"]) == len(data["paths"]) == 12
    np.testing.assert_allclose(np.linalg.norm(data["vectors"], axis=1), 1, atol=1e-5)

    text = run("query", photos / "b" / "img07.jpg", "--index", index_dir, "--k", 3).stdout
    assert "rank" in text and "img" in text


def test_env_var_and_flags_free_query(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("VECSEARCH_INDEX", str(tmp_path / "envindex"))
    run("index", photos, *TINY, "--quiet")
    hits = run_json("query", photos / "a" / "img02.jpg", "--k", 2)  # no --index, no model flags
    assert len(hits) == 2
    assert (tmp_path / "envindex" / "index.db").exists()


def test_default_index_location(photos, tmp_path):
    run("index", photos, *TINY, "--quiet")
    assert (Path(os.environ["XDG_DATA_HOME"]) / "vecsearch" / "index" / "index.db").exists()


def test_every_command_has_help():
    import typer.main

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert cmd.help, f"{name} has no help"
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout
        for param in cmd.params:
            if param.name != "help" and getattr(param, "help", None) is None and param.param_type_name == "option":
                pytest.fail(f"{name} --{param.name} has no help text")


# -- incremental -----------------------------------------------------------------------------
def test_second_run_embeds_nothing(tiny_index, photos, monkeypatch):
    tiny_index.add([photos])
    calls = []
    monkeypatch.setattr(type(tiny_index), "extractor", lambda self: calls.append(1) or pytest.fail("embedded again"))
    s = tiny_index.add([photos])
    assert (s.indexed, s.unchanged, s.reused, s.removed) == (0, 12, 0, 0) and not calls


def test_touch_change_move_copy_delete(tiny_index, photos):
    tiny_index.add([photos])
    a = photos / "a"
    # touched: same bytes, new mtime -> nothing embedded
    os.utime(a / "img01.jpg", ns=(1, 1))
    s = tiny_index.add([photos])
    assert (s.indexed, s.unchanged) == (0, 12)
    # changed content -> embedded again, with a new vector
    before = tiny_index.vector(tiny_index.store.image_by_path(str(a / "img02.jpg")).id)
    make_image(a / "img02.jpg", seed=999)
    s = tiny_index.add([photos])
    assert s.indexed == 1 and s.unchanged == 11
    after = tiny_index.vector(tiny_index.store.image_by_path(str(a / "img02.jpg")).id)
    assert not np.allclose(before, after)
    # renamed -> vector reused, id kept, nothing removed
    old = tiny_index.store.image_by_path(str(a / "img04.jpg"))
    (a / "img04.jpg").rename(a / "renamed.jpg")
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused, s.removed) == (0, 1, 0)
    new = tiny_index.store.image_by_path(str(a / "renamed.jpg"))
    assert new.id == old.id and tiny_index.store.image_by_path(str(a / "img04.jpg")) is None
    # copied -> vector reused under a new id
    shutil.copy(a / "img05.jpg", photos / "copy.jpg")
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused) == (0, 1)
    c = tiny_index.store.image_by_path(str(photos / "copy.jpg"))
    np.testing.assert_array_equal(
        tiny_index.vector(c.id), tiny_index.vector(tiny_index.store.image_by_path(str(a / "img05.jpg")).id)
    )
    # deleted -> removed, and reported
    (a / "img00.png").unlink()
    s = tiny_index.add([photos])
    assert s.removed == 1 and s.removed_paths == [str(a / "img00.png")]
    st = tiny_index.stats()
    assert st["images"] == st["vectors"] == 12
    assert tiny_index.searcher.map.ids.tolist() == tiny_index.store.vector_ids().tolist()


def _vectors_by_path(ix) -> dict[str, np.ndarray]:
    ids, vecs, _ = ix.store.vectors()
    recs = ix.store.images(ids)
    return {recs[int(i)].path: v for i, v in zip(ids, vecs, strict=False)}


def test_excluded_or_removed_files_that_come_back_reuse_their_vectors(tiny_index, photos, monkeypatch):
    tiny_index.add([photos])
    want = _vectors_by_path(tiny_index)
    monkeypatch.setattr(type(tiny_index), "extractor", lambda self: pytest.fail("embedded again"))
    s = tiny_index.add([photos], exclude=["b"])
    assert s.removed == 6 and len(tiny_index) == 6
    tiny_index.set_exclude([])  # --clear-exclude
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused, s.unchanged) == (0, 6, 6)
    r = tiny_index.remove([photos / "a", photos / "b" / "img07.jpg"])
    assert r.removed == 7 and len(tiny_index) == 5
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused, s.unchanged) == (0, 7, 5)
    got = _vectors_by_path(tiny_index)
    assert got.keys() == want.keys()
    for path, v in want.items():
        np.testing.assert_array_equal(got[path], v)
    back = str(photos / "a" / "img03.png")
    hit = tiny_index.search(want[back], k=1)[0]
    assert hit.path == back and hit.score == pytest.approx(1.0, abs=1e-5)
    rec = tiny_index.store.image_by_path(back)
    assert (rec.width, rec.height) == (64, 48)  # the facts came back with the vector
    assert tiny_index.searcher.map.ids.tolist() == tiny_index.store.vector_ids().tolist()


def test_an_edit_undone_reuses_the_old_vector_and_kept_vectors_expire(tiny_index, photos, monkeypatch):
    from vecsearch import indexer

    tiny_index.add([photos])
    f = photos / "a" / "img02.jpg"
    original = f.read_bytes()
    make_image(f, seed=999)
    assert tiny_index.add([photos]).indexed == 1
    f.write_bytes(original)
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused) == (0, 1)
    # Bounded: a kept vector older than KEEP_DAYS is forgotten, and its file is embedded again.
    tiny_index.remove([photos / "b"])
    monkeypatch.setattr(indexer, "KEEP_DAYS", 0)
    s = tiny_index.add([photos])
    assert (s.indexed, s.reused) == (6, 0)


def test_a_kept_vector_in_damaged_shard_bytes_is_never_reused(tiny_index, photos):
    tiny_index.add([photos / "a"])
    victim = tiny_index.store.image_by_path(str(photos / "a" / "img01.jpg"))
    slot = tiny_index.store.slot_map()[1][tiny_index.store.slot_map()[0].tolist().index(victim.id)]
    tiny_index.remove([photos / "a" / "img01.jpg"])
    shard = tiny_index.directory / "vectors" / "shard-000000.f32"
    with open(shard, "r+b") as fh:
        fh.seek(int(slot) * 32 * 4)
        fh.write(np.full(32, 7.0, np.float32).tobytes())
    s = tiny_index.add([photos / "a"])
    assert s.repaired == 5 and (s.indexed, s.reused) == (6, 0)  # the whole checksummed run, and the kept one
    assert not np.allclose(tiny_index.vector(tiny_index.store.image_by_path(str(photos / "a" / "img01.jpg")).id), 7.0)


def test_indexing_one_folder_never_drops_another(tiny_index, photos):
    tiny_index.add([photos / "a"])
    tiny_index.add([photos / "b"])
    s = tiny_index.add([photos / "b"])
    assert s.removed == 0
    assert tiny_index.stats()["vectors"] == 12


# -- bad input ---------------------------------------------------------------------------------
def _bad_and_odd_files(root: Path) -> tuple[set[str], set[str]]:
    root.mkdir(parents=True, exist_ok=True)
    good = {make_image(root / "fine.jpg", 1).name}
    (root / "zero.jpg").write_bytes(b"")
    (root / "random.jpg").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "text.png").write_text("this is not a picture\n")
    full = (root / "fine.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.new("1", (12000, 12000)).save(root / "bomb.png")  # 144 MP > the 120 MP cap, 20 kB on disk
    (root / "notes.txt").write_text("ignored: not an image")
    # Odd but valid: each must index.
    Image.fromarray(np.full((40, 50, 4), 120, np.uint8), "RGBA").convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray((np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30)).save(root / "gray16.png")
    p = Image.new("P", (30, 30))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.info["transparency"] = 0
    p.save(root / "palette.png", transparency=0)
    Image.fromarray(np.zeros((20, 30, 4), np.uint8), "RGBA").save(root / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(root / "rotated.jpg", exif=exif)
    good |= {"cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "rotated.jpg"}
    bad = {"zero.jpg", "random.jpg", "text.png", "truncated.jpg", "bomb.png"}
    return good, bad


def test_bad_files_are_reported_and_the_run_succeeds(tmp_path, index_dir):
    good, bad = _bad_and_odd_files(tmp_path / "mixed")
    result = run("index", tmp_path / "mixed", "--index", index_dir, *TINY, "--json")
    s = json.loads(result.stdout)
    failed = {Path(f["path"]).name: f["reason"] for f in s["failed"]}
    assert set(failed) == bad
    assert s["indexed"] == len(good) and s["total"] == len(good) + len(bad)
    assert failed["zero.jpg"] == "empty file"
    assert "not an image" in failed["text.png"] and "not an image" in failed["random.jpg"]
    assert "truncated" in failed["truncated.jpg"]
    assert "too large" in failed["bomb.png"]
    ix = open_index(index_dir, create=False)
    rot = ix.store.image_by_path(str((tmp_path / "mixed" / "rotated.jpg").resolve()))
    assert (rot.width, rot.height) == (20, 40)  # EXIF orientation applied
    assert ix.stats()["failed"] == len(bad)
    # Re-run: failures are still listed, nothing is re-tried while unchanged.
    s2 = json.loads(run("index", tmp_path / "mixed", "--index", index_dir, "--json").stdout)
    assert s2["indexed"] == 0 and {Path(f["path"]).name for f in s2["failed"]} == bad
    # Human output lists only this run's new failures (none now), and says where the earlier ones are listed.
    text = run("index", tmp_path / "mixed", "--index", index_dir, "--quiet")
    assert "failed: " not in text.output and "bomb.png" not in text.output
    assert f"{len(bad)} images failed (0 new in this run)" in text.output and "vecsearch list --failed" in text.output


def test_missing_and_empty_folders_fail_clearly(tmp_path, index_dir):
    r = run("index", tmp_path / "nope", "--index", index_dir, *TINY, ok=False)
    assert r.exit_code == 1 and "No such file or folder" in r.output and "Traceback" not in r.output
    (tmp_path / "empty").mkdir()
    r = run("index", tmp_path / "empty", "--index", index_dir, *TINY, ok=False)
    assert r.exit_code == 1 and "No image files" in r.output
    with pytest.raises(NoImagesError):
        open_index(index_dir, backbone="tiny", weights=None).add([tmp_path / "empty"])
    with pytest.raises(InputNotFoundError):
        open_index(index_dir, backbone="tiny", weights=None).add([tmp_path / "nope"])


def test_user_mistakes_get_messages_not_tracebacks(photos, tmp_path, index_dir):
    r = run("query", photos / "a" / "img01.jpg", "--index", tmp_path / "none", ok=False)
    assert r.exit_code == 1 and "No index at" in r.output
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    r = run("query", tmp_path / "missing.jpg", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "No such file" in r.output
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    r = run("query", bad, "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "not an image" in r.output
    r = run("query", photos / "a" / "img01.jpg", "--index", index_dir, "--k", 0, ok=False)
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = run("index", photos, "--index", index_dir, "--backbone", "resnet51", ok=False)
    assert r.exit_code == 1 and "Unknown backbone" in r.output


# -- one model per index ----------------------------------------------------------------------------
def test_mixing_models_is_refused(photos, index_dir, tmp_path):
    run("index", photos / "a", "--index", index_dir, *TINY, "--quiet")
    r = run("index", photos / "b", "--index", index_dir, "--backbone", "tiny", "--weights", "none", "--seed", "8", ok=False)
    assert r.exit_code == 1 and "seed 7" in r.output
    r = run("index", photos / "b", "--index", index_dir, "--backbone", "resnet50", ok=False)
    assert r.exit_code == 1 and "built with backbone tiny" in r.output
    pytest.raises(IndexMismatchError, open_index, index_dir, weights="imagenet")  # refused before any download
    # A weights file with other values is refused by fingerprint, whatever its name.
    from vecsearch import load_backbone

    other = load_backbone("tiny", None)  # seed 1234 != 7
    f = tmp_path / "tiny.weights.h5"
    other.model.save_weights(str(f))
    ix = open_index(tmp_path / "ix2", backbone="tiny", weights=str(f))
    ix.add([photos / "a"])
    same = open_index(tmp_path / "ix2", weights=str(f))  # same file: fine
    assert same.search(photos / "a" / "img01.jpg", k=1)
    f2 = tmp_path / "tiny2.weights.h5"
    load_backbone("tiny", str(f)).model.save_weights(str(f2))  # same values, other file: fine
    assert open_index(tmp_path / "ix2", weights=str(f2)).backbone.fingerprint == other.fingerprint
    load_backbone("tiny", WeightsSpec_random(5)).model.save_weights(str(f))  # the file changed under the index
    with pytest.raises(IndexMismatchError, match="not the ones that built"):
        open_index(tmp_path / "ix2").embed([photos / "a" / "img01.jpg"])
    # Flags are not needed later: the index remembers its model.
    assert run_json("query", photos / "a" / "img01.jpg", "--index", index_dir, "--k", 1)


def WeightsSpec_random(seed):
    from vecsearch import WeightsSpec

    return WeightsSpec("random", seed=seed)


# -- repair and resume ---------------------------------------------------------------------------------
def test_vector_file_is_repaired_from_the_database(photos, index_dir):
    tiny_index = open_index(index_dir, backbone="tiny", weights=None, seed=7, index_type="hnsw")
    tiny_index.add([photos])
    ids = tiny_index.store.vector_ids().tolist()
    tiny_index.close()
    (index_dir / "vectors.faiss").unlink()
    ix = open_index(index_dir, create=False)
    assert sorted(ix.faiss.ids().tolist()) == ids and ix.stats()["vectors"] == 12
    ix.close()
    (index_dir / "vectors.faiss").write_bytes(b"garbage")
    ix = open_index(index_dir, create=False)
    assert sorted(ix.faiss.ids().tolist()) == ids
    assert ix.search(photos / "a" / "img01.jpg", k=3)


def _snapshot(index: Path) -> dict[str, np.ndarray]:
    ix = open_index(index, create=False)
    try:
        ids, mat, _ = ix.store.vectors()
        recs = ix.store.images(ids)
        assert ix.searcher.map.ids.tolist() == ids.tolist(), "the searcher and SQLite disagree"
        assert ix.stats()["images"] == len(ids)
        return {recs[int(i)].path: v for i, v in zip(ids, mat, strict=False)}
    finally:
        ix.close()


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_rows", [0, 64, 128])
def test_sigkill_then_rerun_gives_the_clean_index(tmp_path, kill_after_rows):
    root = tmp_path / "many"
    for i in range(200):
        make_image(root / f"{i // 50}" / f"im{i:03d}.png", seed=i, size=(40, 30))
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert index_in_subprocess(root, clean).wait(timeout=300) == 0

    proc = index_in_subprocess(root, killed, env={"TINY_BACKBONE_DELAY": "0.03"})
    deadline = time.monotonic() + 120
    while image_rows(killed) < kill_after_rows and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if kill_after_rows == 0:
        time.sleep(1.5)  # mid start-up or first batches
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert image_rows(killed) < 200, "the run finished before it could be killed"

    assert index_in_subprocess(root, killed).wait(timeout=300) == 0
    a, b = _snapshot(clean), _snapshot(killed)
    assert sorted(a) == sorted(b) and len(a) == 200
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-6)


def test_hnsw_index_type_and_conversion(photos, index_dir):
    s = run_json("index", photos / "a", "--index", index_dir, *TINY, "--index-type", "hnsw")
    assert s["indexed"] == 6
    st = run_json("stats", "--index", index_dir)
    assert (st["index_type"], st["faiss_index"]) == ("hnsw", "IndexIDMap2(IndexHNSWFlat)")
    run("index", photos, "--index", index_dir, "--quiet")  # incremental adds keep the type
    ix = open_index(index_dir, create=False)
    assert ix.faiss.index_type == "hnsw" and len(ix.faiss) == 12
    ids, mat, _ = ix.store.vectors()
    for qi in range(len(ids)):  # 12 vectors: HNSW is exact here, so it must equal brute force
        order = np.argsort(-(mat @ mat[qi]), kind="stable")[:4]
        assert [h.id for h in ix.search(mat[qi], k=4)] == [int(ids[j]) for j in order]
    ix.close()
    (photos / "a" / "img01.jpg").unlink()  # removal from an HNSW index (FAISS can't remove in place)
    assert run_json("index", photos, "--index", index_dir)["removed"] == 1
    # Converting back to flat rebuilds from the database, nothing lost.
    run("index", photos, "--index", index_dir, "--index-type", "flat", "--quiet")
    st = run_json("stats", "--index", index_dir)
    assert (st["index_type"], st["faiss_index"], st["vectors"]) == ("flat", "none (exact scan of the stored vectors)", 11)
    assert not (index_dir / "vectors.faiss").exists()  # flat searches the stored vectors themselves
    r = run("index", photos, "--index", index_dir, "--index-type", "ivf", ok=False)
    assert r.exit_code == 1 and "Unknown index type" in r.output


# -- what a run reports -----------------------------------------------------------------------
def test_index_lists_only_this_runs_new_failures(tmp_path, index_dir):
    root = tmp_path / "p"
    for i in range(3):
        make_image(root / f"ok{i}.png", seed=i)
    (root / "bad1.jpg").write_bytes(b"not an image")
    first = run("index", root, "--index", index_dir, *TINY)
    assert "failed: " in first.output and "bad1.jpg" in first.output
    again = run("index", root, "--index", index_dir)
    assert "bad1.jpg" not in again.output
    assert "1 more image failed in earlier runs" in again.output and "vecsearch list --failed" in again.output
    (root / "bad2.jpg").write_bytes(b"neither")
    third = run("index", root, "--index", index_dir)
    assert "bad2.jpg" in third.output and "bad1.jpg" not in third.output
    quiet = run("index", root, "--index", index_dir, "-q")
    assert "bad" not in quiet.output and "2 images failed (0 new in this run)" in quiet.output
    s = run_json("index", root, "--index", index_dir)
    assert sorted((Path(f["path"]).name, f["new"]) for f in s["failed"]) == [("bad1.jpg", False), ("bad2.jpg", False)]


def test_index_reports_the_whole_commands_time(photos, index_dir, monkeypatch):
    """The time printed covers the whole command: on a fake clock, 20 s to open the index and 30 s
    after the embedding (both outside the embedding phase, which the old line reported alone)."""
    import time

    import vecsearch.api as api
    import vecsearch.opening as opening

    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_open, real_add = opening.open_index, api.VecIndex.add

    def slow_open(*args, **kwargs):
        ix = real_open(*args, **kwargs)
        clock[0] += 20
        return ix

    def slow_add(self, *args, **kwargs):
        summary = real_add(self, *args, **kwargs)
        clock[0] += 30
        return summary

    monkeypatch.setattr(opening, "open_index", slow_open)
    monkeypatch.setattr(api.VecIndex, "add", slow_add)
    r = run("index", photos, "--index", index_dir, *TINY, "-q")
    assert "Indexed 12," in r.stdout and " in 50.0s -> " in r.stdout
    assert run_json("index", photos, "--index", index_dir, "-q")["seconds"] == 50.0


def test_a_wrong_model_says_to_leave_the_flags_out(indexed_photos):
    """ "(or none)" read as `--weights none`; the fix is to leave the flags out."""
    photos, index_dir = indexed_photos
    for args in (["--weights", "imagenet"], ["--backbone", "resnet50"]):
        r = run("index", photos, "--index", index_dir, *args, ok=False)
        assert r.exit_code == 1 and "(or none)" not in r.output, r.output
        assert "leave out --backbone, --weights and --seed" in r.output
