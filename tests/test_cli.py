"""What the CLI prints: escaped text, aligned tables, JSON lines, --version and completion, help
texts, missing extras named up front, warnings on stderr, and listings a reader stops early.

Library messages speak Python; the CLI adds the flag spelling of a fix (cli_message).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version as dist_version

import numpy as np
import pytest
from helpers import TENCH, TESTS, TINY, make_image, run, run_json, store_imagenet_labels, write_vector_file

from vecsearch import open_index
from vecsearch.config import VERSION
from vecsearch.extras import install_line


def _column_starts(lines: list[str], needles: list[str]) -> set[int]:
    """Where each needle starts in the line holding it (one line per needle)."""
    starts = set()
    for needle in needles:
        (line,) = [ln for ln in lines if needle in ln]
        starts.add(line.index(needle))
    return starts


# -- untrusted text prints verbatim -----------------------------------------------------------
def test_square_brackets_in_paths_and_messages_survive(indexed_photos, tmp_path, monkeypatch):
    photos, index_dir = indexed_photos
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


def test_control_characters_in_labels_and_file_names_are_escaped(tmp_path, index_dir):
    evil_name = "x\x1b]0;pwned\x07\x1b[2J.png"
    photos = tmp_path / "p"
    for i in range(3):
        make_image(photos / f"img{i}.png", i)
    make_image(photos / evil_name, 9)
    csv = tmp_path / "labels.csv"
    csv.write_text(f"img0.png,\x1b[31mred\x1b[0m\nimg1.png,plain\nimg2.png,plain\n{evil_name},plain\n", encoding="utf-8")
    (tmp_path / "img0.png").write_bytes((photos / "img0.png").read_bytes())
    for name in ("img1.png", "img2.png", evil_name):
        (tmp_path / name).write_bytes((photos / name).read_bytes())
    outputs = [run("teach", csv, "--index", index_dir, *TINY, "--quiet").output]
    run("index", photos, "--index", index_dir, "--quiet")
    outputs.append(run("query", photos / "img0.png", "--index", index_dir).output)
    outputs.append(run("stats", "--index", index_dir).output)
    for out in outputs:
        assert "\x1b" not in out and "\x07" not in out, out
    assert "\\x1b[31mred" in outputs[0]
    assert "x\\x1b]0;pwned\\x07\\x1b[2J.png" in outputs[1]


# -- tables -----------------------------------------------------------------------------------
def test_prediction_table_is_aligned_and_paths_are_whole(taught):
    index_dir, unlabelled = taught
    r = run("classify", "--knn", "--index", index_dir)
    lines = r.stdout.splitlines()
    paths = [str(p.resolve()) for p in sorted(unlabelled.iterdir())]
    # Labels of 1 and 24 characters: the path column starts at one offset on every row.
    assert len(_column_starts(lines, paths)) == 1
    header = next(ln for ln in lines if ln.split()[:2] == ["label", "confidence"])
    assert header.index("path") == _column_starts(lines, paths).pop()


def test_tables_never_fold_or_cut_a_long_path(indexed_photos, index_dir, tmp_path):
    # CliRunner's console is 80 columns; this path alone is longer.
    deep = make_image(tmp_path / ("a_rather_long_folder_name_" * 4) / "with_a_long_file_name_too.png", seed=5)
    run("index", deep.parent, "--index", index_dir, "--quiet")
    out = run("query", indexed_photos[0] / "a" / "img01.jpg", "--index", index_dir, "-k", "12").stdout  # all but itself
    lines = out.splitlines()
    assert len(str(deep.resolve())) > 100 and len(lines) == 13
    assert any(ln.endswith(" " + str(deep.resolve())) for ln in lines)
    assert len({ln.index("/") for ln in lines[1:]}) == 1  # every path starts in the same column
    ranks = [int(ln.split()[0]) for ln in lines[1:]]
    assert ranks == list(range(1, 13))


@pytest.mark.parametrize(
    "columns, rows, options",
    [
        (
            ["rank", "class_rank", "prob", "path"],
            [(1, 1, "0.4503", "/a/b.jpg"), (10, 2, None, "/日本/画像.jpg"), (3, 1, "0.1", "x\x1b[1m[bold]y")],
            {"right": ["rank", "class_rank", "prob"]},
        ),
        (
            ["", "rank", "wnid", "name", "prob"],
            [("", 1, "n03908618", "pencil_box", "0.2574"), ("", 22, "n02012849", "crane", "0.19")],
            {"right": ["rank"], "header": False, "min_widths": [0, 2, 9, 25, 6]},
        ),
        (["", "1", "2", "path"], [("1", "1.0000", "0.5000", "p"), ("2", "0.5000", "1.0000", "q q")], {"right": ["", "1", "2"]}),
        (["label", "confidence", "path"], [], {"right": ["confidence"]}),
    ],
)
def test_long_tables_print_the_same_lines_as_rich_table(columns, rows, options, capsys):
    """Past RICH_TABLE_ROWS the table is laid out without rich (measured 100x faster); the lines must not change."""
    from vecsearch.cli.output import print_table

    shown = {}
    for engine in ("rich", "plain"):
        print_table(columns, rows, engine=engine, **options)
        shown[engine] = capsys.readouterr().out
    assert shown["plain"] == shown["rich"]
    assert "\x1b" not in shown["rich"] and all(str(row[-1]).replace("\x1b", "\\x1b") in shown["rich"] for row in rows)


# -- JSON lines -------------------------------------------------------------------------------
def test_jsonl_is_one_object_per_line_equal_to_json(indexed_photos):
    photos, index_dir = indexed_photos
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


# -- --version, completion and help -----------------------------------------------------------
def test_version_and_shell_completion():
    r = run("--version")
    assert r.stdout.strip() == f"vecsearch {VERSION}" == f"vecsearch {dist_version('vecsearch')}"
    from typer.testing import CliRunner

    from vecsearch.cli import app

    script = CliRunner().invoke(app, ["--show-completion", "bash"], prog_name="vecsearch")
    assert script.exit_code == 0 and "_VECSEARCH_COMPLETE=complete_bash" in script.stdout
    assert "--install-completion" in run("--help").stdout
    words = CliRunner().invoke(
        app,
        [],
        prog_name="vecsearch",
        env={"_VECSEARCH_COMPLETE": "complete_bash", "COMP_WORDS": "vecsearch que", "COMP_CWORD": "1"},
    )
    assert words.stdout.split() == ["query"]


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


# -- missing extras, up front -----------------------------------------------------------------
def test_plot_without_matplotlib_fails_before_any_work(taught, tmp_path, monkeypatch):
    index_dir, unlabelled = taught
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    png = tmp_path / "plot.png"
    one, two = sorted(unlabelled.iterdir())[:2]
    for args in (
        ["classify", "--probe", "--name", "p"],
        ["finetune", "--name", "h", "--epochs", "2", "-q"],
        ["similarity", one, two],
    ):
        r = run(*args, "--plot", png, "--index", index_dir, ok=False)
        assert r.exit_code == 1 and install_line("plot") in r.output, r.output
        assert "Traceback" not in r.output and not png.exists()
    assert run_json("classifiers", "--index", index_dir)["classifiers"] == []  # nothing was trained and saved


# -- messages and warnings --------------------------------------------------------------------
def test_library_errors_speak_python_and_the_cli_adds_its_flags(tmp_path, index_dir):
    import re
    from pathlib import Path

    import vecsearch

    # No library message names a command-line flag: scan the raise statements' text.
    pkg = Path(vecsearch.__file__).parent
    offenders = []
    for f in pkg.rglob("*.py"):
        if "cli" in f.relative_to(pkg).parts:
            continue
        for m in re.finditer(r"raise \w+\((?:[^()]|\([^()]*\))*\)", f.read_text()):
            if re.search(r"(?<!ray start )--[a-z]", m.group()):  # Ray's own command may be named
                offenders.append(f"{f.name}: {m.group()[:80]}")
    assert offenders == []
    with pytest.raises(vecsearch.WeightsUnavailableError) as info:
        open_index(index_dir, backbone="tiny", weights=str(tmp_path / "no.h5"))
    assert "--" not in str(info.value) and info.value.option == "weights"
    r = run("index", tmp_path, "--index", index_dir, "--backbone", "tiny", "--weights", tmp_path / "no.h5", ok=False)
    assert r.exit_code == 1 and "--weights FILE" in r.output and "Traceback" not in r.output
    r = run("stats", "--index", tmp_path / "none", ok=False)
    assert "No index at" in r.output and "--index DIR" in r.output


def test_random_weights_warn_on_labels_dupes_and_explain(indexed_photos, tmp_path):
    photos, index_dir = indexed_photos
    r = run("dupes", "--index", index_dir, "--threshold", "0.5")
    assert "random weights" in r.stderr and "random weights" not in r.stdout
    for mode in ("--json", "--jsonl"):  # once on stderr, never repeated in every object
        for args in (["--threshold", "0.5"], ["--threshold", "0.5", "--to-remove"]):
            r = run("dupes", "--index", index_dir, *args, mode)
            rows = json.loads(r.stdout) if mode == "--json" else [json.loads(ln) for ln in r.stdout.splitlines()]
            assert rows and not any("warning" in row for row in rows) and "random weights" not in r.stdout
            assert r.stderr.count("random weights") == 1
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))
    store_imagenet_labels(index_dir, {p: [(*TENCH, 0.99)] for p in paths})
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


# -- progress ---------------------------------------------------------------------------------
def test_progress_bars_show_no_rate_for_an_instant_step(monkeypatch):
    """Export's bar said `62138732.1 img/s`: a rate over a few milliseconds is noise (fake clock)."""
    import io
    import time

    from rich.console import Console

    from vecsearch.cli import output

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    def shown(steps) -> str:
        buf = io.StringIO()
        monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=True, width=200))
        with output.progress_bar("Exporting", quiet=False) as update:
            for dt, done in steps:
                clock[0] += dt
                update(done, 1000)
        return buf.getvalue()

    assert "img/s" not in shown([(0, 0), (0.003, 1000)])
    assert "250.0 img/s" in shown([(0, 0), (2.0, 500), (2.0, 1000)])


# -- a reader that stops early ----------------------------------------------------------------
@pytest.fixture
def big_listing(tmp_path):
    """3,000 imported vectors with 300-character paths, in near-identical threes: every listing below
    prints far more than a pipe holds (64 KiB), so a reader that stops after one line closes it mid-write."""
    rng = np.random.default_rng(0)
    vecs = np.repeat(rng.standard_normal((1000, 32)), 3, axis=0) + 1e-4 * rng.standard_normal((3000, 32))
    paths = [f"/nowhere/{'x' * 280}/{i:05d}.jpg" for i in range(3000)]
    meta = {
        "backbone": "tiny",
        "weights_kind": "file",
        "weights_path": "/nowhere/tiny.weights.h5",
        "weights_fingerprint": "f" * 64,
        "dim": 32,
        "metric": "cosine",
    }  # not random: no warning on stderr
    npz = write_vector_file(tmp_path / "big.npz", vecs.astype(np.float32), meta, paths=paths)
    run("import", npz, "--index", tmp_path / "big", "-q")
    return tmp_path / "big"


LISTINGS = [
    ["list"],
    ["list", "--all"],
    ["list", "--json"],
    ["list", "--jsonl"],
    ["dupes", "-q", "--threshold", "0.99"],
    ["dupes", "--threshold", "0.99", "--json"],
    ["dupes", "--threshold", "0.99", "--jsonl"],
    ["dupes", "--threshold", "0.99", "--to-remove"],
    ["dupes", "--threshold", "0.99", "--to-remove", "--json"],
]  # -q: no progress bar on stderr


@pytest.mark.slow  # nine CLI processes at once, each importing vecsearch: ~30 s on 2 cores
def test_a_reader_that_stops_early_ends_every_listing_quietly(big_listing):
    """`vecsearch list | head -1` exits 0 with nothing on stderr (it said "Broken pipe. Check the disk"
    and exited 1): real processes whose stdout a reader closes after one line, Python's flush at exit included."""
    import subprocess

    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import tiny_backbone; from vecsearch.cli import app; "
        "app(sys.argv[1:], prog_name='vecsearch')"
    )
    procs = [
        (
            args,
            subprocess.Popen(
                [sys.executable, "-c", code, *args, "--index", str(big_listing)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            ),
        )
        for args in LISTINGS
    ]
    for args, proc in procs:
        first = proc.stdout.readline()
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=300) == 0 and stderr == b"" and first.strip(), (args, proc.returncode, stderr[-2000:])
