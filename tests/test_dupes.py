"""Near-duplicate groups and the similarity matrix, against numpy brute force; `dupes --to-remove`
keeps one image per group (the oldest, or the largest) and marks the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, make_image, run, run_json
from PIL import Image
from typer.testing import CliRunner

from vecsearch.cli import app
from vecsearch.errors import InputNotFoundError, VecsearchError

runner = CliRunner()
# Measured on the tiny backbone (seed 7): copies score >= 0.9999 with their original,
# distinct images at most ~0.99 with each other; 0.995 sits in the gap.
THRESHOLD = 0.995


@pytest.fixture
def dupe_folder(tmp_path) -> tuple[Path, set[str], set[str]]:
    """Distinct images plus, for two of them, a half-size copy and a JPEG (quality 60) copy."""
    root = tmp_path / "dupes"
    for i in range(8):
        make_image(root / f"img{i}.png", seed=100 + i, size=(96, 72))
    groups = []
    for i, sub in ((0, "copies"), (5, "other")):
        orig = Image.open(root / f"img{i}.png").convert("RGB")
        small = root / sub / f"img{i}_half.png"
        jpeg = root / sub / f"img{i}_q60.jpg"
        small.parent.mkdir(parents=True, exist_ok=True)
        orig.resize((48, 36), Image.BILINEAR).save(small)
        orig.save(jpeg, quality=60)
        groups.append({str((root / f"img{i}.png").resolve()), str(small.resolve()), str(jpeg.resolve())})
    return root, groups[0], groups[1]


def _brute_force_groups(ix, threshold):
    """All-pairs similarity matrix and a plain flood fill: the reference."""
    ids, mat, _ = ix.store.vectors()
    sims = mat @ mat.T
    adj = sims >= threshold
    seen, out = set(), []
    for s in range(len(ids)):
        if s in seen:
            continue
        comp, stack = set(), [s]
        while stack:
            a = stack.pop()
            if a in comp:
                continue
            comp.add(a)
            stack.extend(np.flatnonzero(adj[a]).tolist())
        seen |= comp
        if len(comp) > 1:
            out.append({int(ids[c]) for c in comp})
    return sorted(out, key=lambda g: min(g)), sims


def test_copies_grouped_with_their_original_and_nothing_else(tiny_index, dupe_folder):
    root, group_a, group_b = dupe_folder
    tiny_index.add([root])
    groups = tiny_index.duplicates(THRESHOLD)
    assert [set(g.paths) for g in groups] == sorted([group_a, group_b], key=lambda g: min(g))
    for g in groups:
        assert g.paths == sorted(g.paths) and len(g.ids) == 3
        assert THRESHOLD <= g.min_score <= g.score <= 1.0 + 1e-6

    # Same components as an all-pairs brute force, which also shows the margin is real.
    ref, sims = _brute_force_groups(tiny_index, THRESHOLD)
    assert sorted((set(g.ids) for g in groups), key=min) == ref
    in_group = {i for g in groups for i in g.ids}
    ids, _, _ = tiny_index.store.vectors()
    pos = {int(i): n for n, i in enumerate(ids)}
    distinct = [pos[i] for i in map(int, ids) if i not in in_group] + [pos[min(g.ids)] for g in groups]
    off = sims[np.ix_(distinct, distinct)][~np.eye(len(distinct), dtype=bool)]
    assert off.max() < THRESHOLD - 0.002


def test_groups_chain_through_neighbours_beyond_k(tiny_index, tmp_path):
    """k=1 still finds a whole group of 4 copies: groups are components, not k-NN lists."""
    root = tmp_path / "many"
    make_image(root / "base.png", seed=3, size=(96, 72))
    base = Image.open(root / "base.png").convert("RGB")
    for q in (50, 70, 90):
        base.save(root / f"base_q{q}.jpg", quality=q)
    make_image(root / "lone.png", seed=4, size=(96, 72))
    tiny_index.add([root])
    groups = tiny_index.duplicates(THRESHOLD, k=1)
    assert len(groups) == 1 and len(groups[0].ids) == 4
    assert not any(p.endswith("lone.png") for p in groups[0].paths)


def test_threshold_one_finds_only_identical(tiny_index, photos):
    tiny_index.add([photos])
    assert tiny_index.duplicates(0.9999) == []
    orig = photos / "a" / "img00.png"
    (photos / "b" / "same.png").write_bytes(orig.read_bytes())  # a byte-identical copy
    tiny_index.add([photos])
    groups = tiny_index.duplicates(0.9999)
    assert [g.paths for g in groups] == [sorted([str(orig.resolve()), str((photos / "b" / "same.png").resolve())])]
    with pytest.raises(VecsearchError, match="between -1 and 1"):
        tiny_index.duplicates(1.5)


def test_similarity_matrix_matches_numpy(tiny_index, photos, tmp_path):
    tiny_index.add([photos])
    files = sorted(photos.rglob("*.*"))[:3]
    outside = make_image(tmp_path / "new.png", seed=99)  # not indexed: embedded on the fly
    paths = files + [outside]
    sims = tiny_index.similarity(paths)
    # Reference: vectors straight from the extractor, cosine by numpy.
    ref = tiny_index.embed(paths)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(sims, ref @ ref.T, atol=1e-5)
    assert np.allclose(np.diag(sims), 1.0) and np.allclose(sims, sims.T)
    # indexed paths reuse their stored vectors
    rec = tiny_index.store.image_by_path(str(files[0].resolve()))
    np.testing.assert_array_equal(tiny_index.vectors_for([files[0]])[0], tiny_index.vector(rec.id))


def test_similarity_needs_two_existing_images(tiny_index, photos, tmp_path):
    tiny_index.add([photos])
    one = next(photos.rglob("*.png"))
    with pytest.raises(VecsearchError, match="at least 2"):
        tiny_index.similarity([one])
    with pytest.raises(InputNotFoundError):
        tiny_index.similarity([one, tmp_path / "missing.jpg"])


def test_cli_dupes_and_similarity(tiny_index, dupe_folder, index_dir, tmp_path):
    root, group_a, group_b = dupe_folder
    tiny_index.add([root])
    tiny_index.close()
    r = runner.invoke(app, ["dupes", "--index", str(index_dir), "--threshold", str(THRESHOLD), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert sorted(map(frozenset, (g["paths"] for g in data)), key=min) == sorted(map(frozenset, (group_a, group_b)), key=min)
    assert all(g["size"] == 3 for g in data)
    r = runner.invoke(app, ["dupes", "--index", str(index_dir), "--threshold", str(THRESHOLD), "-q"])
    assert r.exit_code == 0 and "2 groups of near-duplicates (6 images)" in r.stdout

    files = sorted(group_a)
    png = tmp_path / "sim.png"
    r = runner.invoke(app, ["similarity", *files, "--index", str(index_dir), "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    m = np.array(json.loads(r.stdout)["matrix"])
    assert m.shape == (3, 3) and (m >= THRESHOLD).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["similarity", *files[:2], "--index", str(index_dir)])
    assert r.exit_code == 0 and files[1] in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["similarity", "{one}"], "at least 2 images"),
        (["similarity", "{one}", "{missing}"], "No such file"),
        (["similarity", "{one}", "{one}", "--plot", "{missing}/sim.png"], "Cannot write the plot"),
        (["dupes", "--threshold", "2"], "Invalid value"),
    ],
)
def test_cli_bad_input_is_a_message(tiny_index, photos, index_dir, tmp_path, args, message):
    tiny_index.add([photos])
    tiny_index.close()
    one = str(next(photos.rglob("*.png")))
    args = [a.format(one=one, missing=tmp_path / "nope.jpg") for a in args]
    r = runner.invoke(app, [*args, "--index", str(index_dir)])
    assert r.exit_code != 0
    assert message in r.output and "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_cli_dupes_without_index(tmp_path):
    r = runner.invoke(app, ["dupes", "--index", str(tmp_path / "none")])
    assert r.exit_code == 1 and "No index" in r.output


def test_a_group_is_not_cut_at_k(tmp_path):
    """Two tight pairs, close enough to each other to be one group: k=1 sees only the pairs."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32)
    a, c = base, base + 0.04 * rng.standard_normal(32)  # a~c above the threshold
    vecs = [a, a + 0.005 * rng.standard_normal(32), c, c + 0.005 * rng.standard_normal(32), rng.standard_normal(32)]
    vecs = [v / np.linalg.norm(v) for v in vecs]
    # The concept module on its own, with a store and a FAISS index passed in.
    from vecsearch import dupes
    from vecsearch.search import IndexSpec, Searcher, SlotMap
    from vecsearch.store import Store

    store = Store(tmp_path / "index.db")
    store.create_info(
        backbone="tiny",
        weights_kind="random",
        weights_seed=7,
        weights_path=None,
        weights_fingerprint="x",
        dim=32,
        metric="cosine",
        index_type="flat",
    )
    rows = [
        {
            "path": str(tmp_path / f"v{i}.png"),
            "size": 1,
            "mtime_ns": 1,
            "sha256": None,
            "width": 1,
            "height": 1,
            "status": "ok",
            "reason": None,
            "vector": v,
            "norm": 1.0,
        }
        for i, v in enumerate(vecs)
    ]
    store.apply(upserts=rows)
    searcher = Searcher(store.shards, SlotMap(*store.slot_map()), IndexSpec("flat", ""))
    sims = np.array(vecs) @ np.array(vecs).T
    threshold = float(sims[0, 2]) - 1e-4
    assert sims[0, 1] > threshold and sims[2, 3] > threshold and sims[:4, 4].max() < threshold
    groups = dupes.duplicate_groups(store, searcher, threshold, k=1)
    store.close()
    assert [len(g.ids) for g in groups] == [4]


def test_similarity_plot_names_rows_by_their_shortest_unique_suffix(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from vecsearch import plots

    seen = {}

    def capture(plt, fig, path):
        seen["labels"] = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        plt.close(fig)

    monkeypatch.setattr(plots, "_save", capture)
    paths = ["/photos/2023/img.jpg", "/photos/2024/img.jpg", "/photos/2024/cat$1$.jpg"]
    plots.similarity_matrix(paths, np.eye(3), tmp_path / "m.png")
    assert seen["labels"] == ["2023/img.jpg", "2024/img.jpg", r"cat\$1\$.jpg"]


# -- dupes --to-remove ------------------------------------------------------------------------
@pytest.fixture
def copies(tmp_path, index_dir):
    """Two originals, each with a half-size PNG and a JPEG copy; mtimes set so the JPEG is oldest."""
    root = tmp_path / "dupes"
    groups = []
    for i in range(2):
        orig = make_image(root / f"img{i}.png", seed=100 + i, size=(96, 72))
        im = Image.open(orig).convert("RGB")
        half, jpeg = root / f"img{i}_half.png", root / f"img{i}_q60.jpg"
        im.resize((48, 36), Image.BILINEAR).save(half)
        im.save(jpeg, quality=60)
        for age, p in enumerate((orig, half, jpeg)):
            os.utime(p, ns=(1_700_000_000_000_000_000 - age * 10**12,) * 2)
        groups.append([orig, half, jpeg])
    for i in range(4):
        make_image(root / f"other{i}.png", seed=300 + i, size=(96, 72))
    run("index", root, "--index", index_dir, *TINY, "--quiet")
    return groups


def _reference_keep(group: list[Path], keep: str) -> Path:
    def pixels(p):
        with Image.open(p) as im:
            return im.width * im.height

    if keep == "largest":
        return max(group, key=lambda p: (pixels(p), p.stat().st_size))
    return min(group, key=lambda p: (p.stat().st_mtime_ns, -p.stat().st_size, len(str(p))))


@pytest.mark.parametrize("keep", ["largest", "oldest"])
def test_dupes_to_remove_keeps_one_per_group(copies, index_dir, keep):
    expected = sorted(str(p.resolve()) for g in copies for p in g if p != _reference_keep(g, keep))
    args = ["dupes", "--to-remove", "--keep", keep, "--threshold", "0.995", "--index", index_dir]
    r = run(*args)
    assert sorted(r.stdout.splitlines()) == expected
    rows = run_json(*args)
    assert sorted(row["path"] for row in rows) == expected
    kept = {str(_reference_keep(g, keep).resolve()) for g in copies}
    assert {row["keep"] for row in rows} == kept
    lines = run(*args, "--jsonl").stdout.splitlines()
    assert [json.loads(ln) for ln in lines] == rows
    if keep == "oldest":  # the default
        assert run("dupes", "--to-remove", "--threshold", "0.995", "--index", index_dir).stdout == r.stdout
    r = run("dupes", "--keep", keep, "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "--keep goes with --to-remove" in r.output


def test_dupes_to_remove_marks_an_upscaled_copy_not_the_original(tmp_path, index_dir):
    """`--keep largest` (most pixels) kept a 2x upscale over its original; the default keeps the oldest."""
    root = tmp_path / "up"
    orig = make_image(root / "photo.png", seed=100, size=(96, 72))
    im = Image.open(orig).convert("RGB")
    big, half = root / "photo_2x.png", root / "photo_half.png"
    im.resize((192, 144), Image.BICUBIC).save(big)
    im.resize((48, 36), Image.BILINEAR).save(half)
    os.utime(orig, ns=(1_600_000_000_000_000_000,) * 2)  # made first; the copies later
    for p in (big, half):
        os.utime(p, ns=(1_700_000_000_000_000_000,) * 2)
    for i in range(3):
        make_image(root / f"other{i}.png", seed=300 + i, size=(96, 72))
    run("index", root, "--index", index_dir, *TINY, "--quiet")
    args = ["dupes", "--to-remove", "--threshold", "0.995", "--index", index_dir]
    assert sorted(run(*args).stdout.splitlines()) == sorted([str(big.resolve()), str(half.resolve())])
    assert {row["keep"] for row in run_json(*args)} == {str(orig.resolve())}
    assert str(big.resolve()) not in run(*args, "--keep", "largest").stdout.splitlines()  # as its help says
    assert (
        "upscaled"
        in run(
            "dupes",
            "--help",
        ).stdout
    )
