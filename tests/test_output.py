"""What the CLI prints: escaped text, aligned tables, JSON lines, --version and completion,
missing extras named up front, and the output fixes of issue 12 (each test fails on the old code)."""

from __future__ import annotations

import json
import os
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import TESTS, make_image, run, run_json, write_vector_file
from vecsearch import open_index
from vecsearch.config import VERSION
from vecsearch.extras import install_line

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]


def _column_starts(lines: list[str], needles: list[str]) -> set[int]:
    """Where each needle starts in the line holding it (one line per needle)."""
    starts = set()
    for needle in needles:
        (line,) = [ln for ln in lines if needle in ln]
        starts.add(line.index(needle))
    return starts


@pytest.fixture
def indexed(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    return photos, index_dir


@pytest.fixture
def taught(tmp_path, index_dir):
    """Two classes of very different name lengths (8 images each) and 4 unlabelled images."""
    classes = tmp_path / "classes"
    for name, base in (("a", 0), ("a_much_longer_class_name", 50)):
        for i in range(8):
            make_image(classes / name / f"{name}{i}.png", seed=base + i)
    unlabelled = tmp_path / "new"
    for i in range(4):
        make_image(unlabelled / f"new{i}.png", seed=200 + i)
    run("teach", classes, "--index", index_dir, *TINY, "--quiet")
    run("index", unlabelled, "--index", index_dir, "--quiet")
    return index_dir, unlabelled


# -- 1. untrusted text prints verbatim ----------------------------------------------------------
def test_square_brackets_in_paths_and_messages_survive(indexed, tmp_path, monkeypatch):
    photos, index_dir = indexed
    monkeypatch.chdir(tmp_path)
    r = run("query", "a[b]/x.jpg", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "a[b]/x.jpg" in r.output and "Traceback" not in r.output
    # A path that looks like rich markup is a table cell like any other.
    odd = make_image(tmp_path / "[bold]x[/bold]" / "[red]y.png", seed=3)
    run("index", odd.parent, "--index", index_dir, "--quiet")
    r = run("query", photos / "a" / "img01.jpg", "--index", index_dir, "-k", "12")  # all but itself
    assert any(ln.endswith(" " + str(odd.resolve())) for ln in r.stdout.splitlines())

    for module in ("uvicorn", "fastapi"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)
            r = run("serve", "--index", index_dir, ok=False)
        assert r.exit_code == 1 and install_line("server") in r.output and module in r.output


# -- 2. tables -----------------------------------------------------------------------------------
def test_prediction_table_is_aligned_and_paths_are_whole(taught):
    index_dir, unlabelled = taught
    r = run("classify", "--knn", "--index", index_dir)
    lines = r.stdout.splitlines()
    paths = [str(p.resolve()) for p in sorted(unlabelled.iterdir())]
    # Labels of 1 and 24 characters: the path column starts at one offset on every row.
    assert len(_column_starts(lines, paths)) == 1
    header = next(ln for ln in lines if ln.split()[:2] == ["label", "confidence"])
    assert header.index("path") == _column_starts(lines, paths).pop()


def test_tables_never_fold_or_cut_a_long_path(indexed, index_dir, tmp_path):
    # CliRunner's console is 80 columns; this path alone is longer.
    deep = make_image(tmp_path / ("a_rather_long_folder_name_" * 4) / "with_a_long_file_name_too.png", seed=5)
    run("index", deep.parent, "--index", index_dir, "--quiet")
    out = run("query", indexed[0] / "a" / "img01.jpg", "--index", index_dir, "-k", "12").stdout  # all but itself
    lines = out.splitlines()
    assert len(str(deep.resolve())) > 100 and len(lines) == 13
    assert any(ln.endswith(" " + str(deep.resolve())) for ln in lines)
    assert len({ln.index("/") for ln in lines[1:]}) == 1  # every path starts in the same column
    ranks = [int(ln.split()[0]) for ln in lines[1:]]
    assert ranks == list(range(1, 13))


# -- 3. JSON lines -------------------------------------------------------------------------------
def test_jsonl_is_one_object_per_line_equal_to_json(indexed):
    photos, index_dir = indexed
    q = photos / "a" / "img01.jpg"
    as_json = run_json("query", q, "--index", index_dir, "-k", 5)
    lines = run("query", q, "--index", index_dir, "-k", 5, "--jsonl").stdout.splitlines()
    assert [json.loads(ln) for ln in lines] == as_json and len(lines) == 5
    groups = run_json("dupes", "--index", index_dir, "--threshold", "0.5")
    lines = run("dupes", "--index", index_dir, "--threshold", "0.5", "--jsonl").stdout.splitlines()
    assert [json.loads(ln) for ln in lines] == groups and groups
    r = run("query", q, "--index", index_dir, "--json", "--jsonl", ok=False)
    assert r.exit_code == 1 and "not both" in r.output


def test_classify_jsonl_gives_the_predictions(taught):
    index_dir, unlabelled = taught
    full = run_json("classify", "--knn", "--index", index_dir)
    lines = run("classify", "--knn", "--index", index_dir, "--jsonl").stdout.splitlines()
    rows = [json.loads(ln) for ln in lines]
    assert rows == full["predictions"] and {r["path"] for r in rows} == {str(p.resolve()) for p in unlabelled.iterdir()}


# -- 4. --version and completion -----------------------------------------------------------------
def test_version_and_shell_completion():
    r = run("--version")
    assert r.stdout.strip() == f"vecsearch {VERSION}" == f"vecsearch {dist_version('vecsearch')}"
    from typer.testing import CliRunner

    from vecsearch.cli import app

    script = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="vecsearch")
    assert script.exit_code == 0 and "_VECSEARCH_COMPLETE=complete_bash" in script.stdout
    assert "--install-completion" in run("--help").stdout
    words = CliRunner().invoke(app, [], prog_name="vecsearch",
                               env={"_VECSEARCH_COMPLETE": "complete_bash", "COMP_WORDS": "vecsearch que", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["query"]


# -- 5. missing extras, up front -----------------------------------------------------------------
def test_plot_without_matplotlib_fails_before_any_work(taught, tmp_path, monkeypatch):
    index_dir, unlabelled = taught
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "plot.png"
    one, two = sorted(unlabelled.iterdir())[:2]
    for args in (["classify", "--probe", "--name", "p"], ["finetune", "--name", "h", "--epochs", "2", "-q"],
                 ["similarity", one, two]):
        r = run(*args, "--plot", png, "--index", index_dir, ok=False)
        assert r.exit_code == 1 and install_line("plot") in r.output, r.output
        assert "Traceback" not in r.output and not png.exists()
    assert run_json("classifiers", "--index", index_dir)["classifiers"] == []  # nothing was trained and saved


def test_parquet_without_pyarrow_names_the_extra_and_writes_nothing(indexed, tmp_path, monkeypatch):
    photos, index_dir = indexed
    run("export", tmp_path / "v.npz", "--index", index_dir, "-q")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    r = run("export", tmp_path / "out.parquet", "--index", index_dir, "-q", ok=False)
    assert r.exit_code == 1 and install_line("parquet") in r.output
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    r = run("import", tmp_path / "in.parquet", "--index", tmp_path / "fresh", "-q", ok=False)
    assert r.exit_code == 1 and install_line("parquet") in r.output
    assert not (tmp_path / "fresh").exists() and not list(tmp_path.glob("out.parquet*"))


# -- 6. export writes the file it reports ---------------------------------------------------------
def test_export_writes_exactly_the_named_file(indexed, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    photos, index_dir = indexed
    out = tmp_path / "out" / "vectors.parquet"
    out.parent.mkdir()
    reported = run_json("export", out, "--index", index_dir, "-q")
    assert reported == {"exported": 12, "file": str(out)}
    assert sorted(os.listdir(out.parent)) == ["vectors.parquet"]
    data = out.read_bytes()
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    table = pq.read_table(out)
    assert table.num_rows == 12 and {"path", "vector"} <= set(table.column_names)
    npz = tmp_path / "out" / "vectors.npz"
    assert run_json("export", npz, "--index", index_dir, "-q")["file"] == str(npz)
    assert sorted(os.listdir(out.parent)) == ["vectors.npz", "vectors.parquet"] and len(np.load(npz)["ids"]) == 12


# -- 7. output fixes -----------------------------------------------------------------------------
def _store_imagenet_labels(index_dir, table: dict[str, list[tuple[str, str, float]]]) -> dict[str, int]:
    """Write ImageNet top-k rows ({path: [(wnid, name, prob), ...] best first}) straight into the store."""
    from vecsearch.labels import find_classes

    with open_index(index_dir, create=False) as ix:
        ids = {rec.path: rec.id for rec in ix.images(0, 1000)[1]}
        rows = [(ids[p], rank, find_classes(wnid)[0].index, wnid, name, prob)
                for p, labels in table.items() for rank, (wnid, name, prob) in enumerate(labels, 1)]
        ix.store.set_imagenet_labels([ids[p] for p in table], rows)
    return ids


TENCH = ("n01440764", "tench")
GOLDFISH = ("n01443537", "goldfish")


def test_imagenet_listing_ranks_results_and_names_the_class_rank(indexed):
    photos, index_dir = indexed
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))[:3]
    _store_imagenet_labels(index_dir, {
        paths[0]: [(*TENCH, 0.9), (*GOLDFISH, 0.1)],
        paths[1]: [(*GOLDFISH, 0.6), (*TENCH, 0.4)],
        paths[2]: [(*TENCH, 0.7), (*GOLDFISH, 0.3)],
    })
    hits = run_json("search-labels", "tench", "--index", index_dir)
    assert [(h["path"], h["rank"], h["class_rank"]) for h in hits] == [(paths[0], 1, 1), (paths[2], 2, 1), (paths[1], 3, 2)]
    lines = run("search-labels", "tench", "--index", index_dir).stdout.splitlines()
    assert lines[0].split() == ["rank", "class_rank", "prob", "path"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["1", "1"], ["2", "1"], ["3", "2"]]
    # A real class no image has: one line that says so (and that 9 images have no labels), not a bare header.
    r = run("search-labels", "golden_retriever", "--index", index_dir)
    assert r.stdout.strip() == ("No labelled image has golden_retriever in its stored ImageNet top-k; only 3 of 12 "
                                "indexed images have ImageNet labels: `vecsearch label --missing` labels the other 9.")
    assert run_json("search-labels", "golden_retriever", "--index", index_dir) == []


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


def test_finetune_hint_names_the_head_and_the_index(taught):
    index_dir, _ = taught
    r = run("finetune", "--name", "tuned", "--epochs", "2", "--index", index_dir, "-q")
    assert f"`vecsearch classify --head --name tuned --index {index_dir}`" in r.stdout
    assert run_json("classify", "--head", "--name", "tuned", "--index", index_dir)["kind"] == "head"


def test_random_weights_warn_on_labels_dupes_and_explain(indexed, tmp_path):
    photos, index_dir = indexed
    r = run("dupes", "--index", index_dir, "--threshold", "0.5")
    assert "random weights" in r.stderr and "random weights" not in r.stdout
    for mode in ("--json", "--jsonl"):  # once on stderr, never repeated in every object
        for args in (["--threshold", "0.5"], ["--threshold", "0.5", "--to-remove"]):
            r = run("dupes", "--index", index_dir, *args, mode)
            rows = json.loads(r.stdout) if mode == "--json" else [json.loads(ln) for ln in r.stdout.splitlines()]
            assert rows and not any("warning" in row for row in rows) and "random weights" not in r.stdout
            assert r.stderr.count("random weights") == 1
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))
    _store_imagenet_labels(index_dir, {p: [(*TENCH, 0.99)] for p in paths})
    r = run("label", "--missing", "--index", index_dir, "-q")  # all labelled already: nothing computed
    assert "random weights" in r.stderr and paths[0] in r.stdout
    r = run("label", "--missing", "--index", index_dir, "-q", "--json")
    items = json.loads(r.stdout)
    assert len(items) == 12 and not any("warning" in i for i in items) and r.stderr.count("random weights") == 1
    # explain warns as label and dupes do: its heatmaps come from the same random model
    out = tmp_path / "why.png"
    r = run("explain", paths[0], "--like", paths[1], "--out", out, "--index", index_dir)
    assert "random weights" in r.stderr and "random weights" not in r.stdout and out.exists()
    assert "random weights" in run_json("explain", paths[0], "--like", paths[1], "--out", out, "--index", index_dir)["warning"]
    r = run("index", photos, "--index", index_dir, "--label", "-q")  # labels only the missing ones: none
    assert "Labelled 0 images" in r.stdout and "random weights" in r.stderr and "random weights" not in r.stdout
    assert "random weights" in run_json("index", photos, "--index", index_dir, "--label")["warning"]


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


# -- 8. dupes --to-remove ------------------------------------------------------------------------
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


def test_help_texts_print_verbatim_under_rich_markup():
    """Typer reads help texts as rich markup: a `[server]` in one would vanish. Every help text
    (commands and options) must come out of `--help` word for word."""
    import re

    import typer
    from typer.testing import CliRunner

    from vecsearch.cli import app

    def squash(text: str) -> str:
        return re.sub(r"[\s│]+", " ", text)

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        shown = squash(CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "4000"}).stdout)
        texts = [command.help.split("\n\n")[0]] + [p.help for p in command.params if getattr(p, "help", None)]
        for text in texts:  # `\[` is rich's escape for a literal bracket: shown as `[`
            assert squash(text.replace("\\[", "[")).strip() in shown, (name, text)


@pytest.mark.parametrize("columns, rows, options", [
    (["rank", "class_rank", "prob", "path"],
     [(1, 1, "0.4503", "/a/b.jpg"), (10, 2, None, "/日本/画像.jpg"), (3, 1, "0.1", "x\x1b[1m[bold]y")],
     {"right": ["rank", "class_rank", "prob"]}),
    (["", "rank", "wnid", "name", "prob"], [("", 1, "n03908618", "pencil_box", "0.2574"), ("", 22, "n02012849", "crane", "0.19")],
     {"right": ["rank"], "header": False, "min_widths": [0, 2, 9, 25, 6]}),
    (["", "1", "2", "path"], [("1", "1.0000", "0.5000", "p"), ("2", "0.5000", "1.0000", "q q")], {"right": ["", "1", "2"]}),
    (["label", "confidence", "path"], [], {"right": ["confidence"]}),
])
def test_long_tables_print_the_same_lines_as_rich_table(columns, rows, options, capsys):
    """Past RICH_TABLE_ROWS the table is laid out without rich (measured 100x faster); the lines must not change."""
    from vecsearch.cli._common import print_table

    shown = {}
    for engine in ("rich", "plain"):
        print_table(columns, rows, engine=engine, **options)
        shown[engine] = capsys.readouterr().out
    assert shown["plain"] == shown["rich"]
    assert "\x1b" not in shown["rich"] and all(str(row[-1]).replace("\x1b", "\\x1b") in shown["rich"] for row in rows)


# -- 9. a reader that stops early ---------------------------------------------------------------
@pytest.fixture
def big_listing(tmp_path):
    """3,000 imported vectors with 300-character paths, in near-identical threes: every listing below
    prints far more than a pipe holds (64 KiB), so a reader that stops after one line closes it mid-write."""
    rng = np.random.default_rng(0)
    vecs = np.repeat(rng.standard_normal((1000, 32)), 3, axis=0) + 1e-4 * rng.standard_normal((3000, 32))
    paths = [f"/nowhere/{'x' * 280}/{i:05d}.jpg" for i in range(3000)]
    meta = {"backbone": "tiny", "weights_kind": "file", "weights_path": "/nowhere/tiny.weights.h5",
            "weights_fingerprint": "f" * 64, "dim": 32, "metric": "cosine"}  # not random: no warning on stderr
    npz = write_vector_file(tmp_path / "big.npz", vecs.astype(np.float32), meta, paths=paths)
    run("import", npz, "--index", tmp_path / "big", "-q")
    return tmp_path / "big"


LISTINGS = [["list"], ["list", "--all"], ["list", "--json"], ["list", "--jsonl"],
            ["dupes", "-q", "--threshold", "0.99"], ["dupes", "--threshold", "0.99", "--json"],
            ["dupes", "--threshold", "0.99", "--jsonl"], ["dupes", "--threshold", "0.99", "--to-remove"],
            ["dupes", "--threshold", "0.99", "--to-remove", "--json"]]  # -q: no progress bar on stderr


def test_a_reader_that_stops_early_ends_every_listing_quietly(big_listing):
    """`vecsearch list | head -1` exits 0 with nothing on stderr (it said "Broken pipe. Check the disk"
    and exited 1): real processes whose stdout a reader closes after one line, Python's flush at exit included."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; "
            "app(sys.argv[1:], prog_name='vecsearch')")
    procs = [(args, subprocess.Popen([sys.executable, "-c", code, *args, "--index", str(big_listing)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)) for args in LISTINGS]
    for args, proc in procs:
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=300) == 0 and stderr == b"" and first.strip(), (args, proc.returncode, stderr[-2000:])


# -- 10. honest counts ---------------------------------------------------------------------------
def test_stats_shows_the_stored_vectors_and_the_search_structure_apart(indexed):
    photos, index_dir = indexed
    shards = sum(p.stat().st_size for p in (index_dir / "vectors").glob("shard-*.f32"))
    s = run_json("stats", "--index", index_dir)
    assert s["index_type"] == "flat" and s["vectors_bytes"] == shards >= 12 * 32 * 4 and s["structure_bytes"] == 0
    run("reindex", "--index-type", "hnsw", "--index", index_dir, "-q")
    s = run_json("stats", "--index", index_dir)
    structure = sum((index_dir / name).stat().st_size for name in ("vectors.faiss", "vectors.faiss.json"))
    assert s["vectors_bytes"] == shards and s["structure_bytes"] == structure > 0


def test_index_reports_the_whole_commands_time(photos, index_dir, monkeypatch):
    """The time printed covers the whole command: on a fake clock, 20 s to open the index and 30 s
    after the embedding (both outside the embedding phase, which the old line reported alone)."""
    import time

    import vecsearch.api as api

    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    real_open, real_add = api.open_index, api.VecIndex.add

    def slow_open(*args, **kwargs):
        ix = real_open(*args, **kwargs)
        clock[0] += 20
        return ix

    def slow_add(self, *args, **kwargs):
        summary = real_add(self, *args, **kwargs)
        clock[0] += 30
        return summary

    monkeypatch.setattr(api, "open_index", slow_open)
    monkeypatch.setattr(api.VecIndex, "add", slow_add)
    r = run("index", photos, "--index", index_dir, *TINY, "-q")
    assert "Indexed 12," in r.stdout and " in 50.0s -> " in r.stdout
    assert run_json("index", photos, "--index", index_dir, "-q")["seconds"] == 50.0


def test_progress_bars_show_no_rate_for_an_instant_step(monkeypatch):
    """Export's bar said `62138732.1 img/s`: a rate over a few milliseconds is noise (fake clock)."""
    import io
    import time

    from rich.console import Console

    from vecsearch.cli import _common

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def shown(steps) -> str:
        buf = io.StringIO()
        monkeypatch.setattr(_common, "err", Console(file=buf, force_terminal=True, width=200))
        with _common.progress_bar("Exporting", quiet=False) as update:
            for dt, done in steps:
                clock[0] += dt
                update(done, 1000)
        return buf.getvalue()

    assert "img/s" not in shown([(0, 0), (0.003, 1000)])
    assert "250.0 img/s" in shown([(0, 0), (2.0, 500), (2.0, 1000)])


def test_list_shows_indexed_images_and_failed_files_only_when_asked(photos, index_dir):
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    bad = photos / "a" / "bad.jpg"
    bad.write_bytes(b"not an image")
    run("index", photos, "--index", index_dir, "--quiet")
    good = sorted(str(p) for p in photos.rglob("*.*") if p != bad)
    assert sorted(run("list", "--index", index_dir).stdout.splitlines()) == good
    assert [r["status"] for r in run_json("list", "--index", index_dir)] == ["ok"] * 12
    assert run("list", "--failed", "--index", index_dir).stdout.splitlines() == [f"{bad}: not an image (unrecognised format)"]
    every = run("list", "--all", "--index", index_dir).stdout.splitlines()
    assert len(every) == 13 and f"{bad}: not an image (unrecognised format)" in every
    assert len(run_json("list", "--all", "--index", index_dir)) == 13
    r = run("list", "--all", "--failed", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "not both" in r.output


# -- 11. messages ---------------------------------------------------------------------------------
def test_flags_show_no_type_in_help():
    """`--version <bool>`: a flag takes no value, so --help shows none (typer prints a type for every option)."""
    import typer
    from typer.testing import CliRunner

    from vecsearch.cli import app

    main = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    version = next(ln for ln in main.splitlines() if "--version" in ln)
    assert "<bool>" not in main and "<" not in version and "<int>" not in main
    for name in typer.main.get_command(app).commands:
        shown = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"}).stdout
        assert "--help" in shown and "<bool>" not in shown, name


def test_a_wrong_model_says_to_leave_the_flags_out(indexed):
    """"(or none)" read as `--weights none`; the fix is to leave the flags out."""
    photos, index_dir = indexed
    for args in (["--weights", "imagenet"], ["--backbone", "resnet50"]):
        r = run("index", photos, "--index", index_dir, *args, ok=False)
        assert r.exit_code == 1 and "(or none)" not in r.output, r.output
        assert "leave out --backbone, --weights and --seed" in r.output


def test_classify_head_without_a_head_points_at_finetune(taught):
    index_dir, _ = taught
    r = run("classify", "--head", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "`vecsearch finetune`" in r.output and "classify --knn" not in r.output


def test_imagenet_listing_says_how_many_images_are_labelled(indexed):
    photos, index_dir = indexed
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))
    _store_imagenet_labels(index_dir, {paths[0]: [(*TENCH, 0.9)]})
    r = run("query", "--imagenet", "goldfish", "--index", index_dir)
    assert "only 1 of 12 indexed images have ImageNet labels" in r.stdout and "`vecsearch label --missing`" in r.stdout
    r = run("query", "--imagenet", "tench", "--index", index_dir)
    assert paths[0] in r.stdout and "only 1 of 12" in r.stderr
    assert [h["path"] for h in run_json("search-labels", "tench", "--index", index_dir)] == [paths[0]]
    _store_imagenet_labels(index_dir, {p: [(*TENCH, 0.9)] for p in paths})
    r = run("query", "--imagenet", "goldfish", "--index", index_dir)
    assert r.stdout.strip() == "No indexed image has goldfish in its stored ImageNet top-k." and "of 12" not in r.stderr


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
    assert "upscaled" in run("dupes", "--help", ).stdout
