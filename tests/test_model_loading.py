"""Loading the model: a status line while it loads, and every check that needs no model made before it.

A model load is seconds (the tiny backbone) to over a minute (ResNet50 on a busy machine, the
first TensorFlow import included); a mistake in the command line must not wait for it.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from helpers import make_image, run
from rich.console import Console
from tiny_backbone import TINY as TINY_SPEC

TINY = ["--backbone", "tiny", "--weights", "none", "--seed", "7"]


@pytest.fixture
def indexed(photos, index_dir):
    """The photos on the tiny backbone, taught as classes a and b, with a saved k-NN classifier."""
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    run("teach", photos, "--index", index_dir, "-q")
    run("classify", "--knn", "--index", index_dir)
    return photos, index_dir


@pytest.fixture
def loads(monkeypatch):
    """Every model the commands build or load, by kind: the tiny backbone's builds and saved classifiers."""
    from vecsearch import backbones, classifiers

    seen: list[str] = []

    def build(weights, include_top):
        seen.append("backbone")
        return TINY_SPEC.build(weights, include_top)

    real_load = classifiers.load

    def load(directory, row):
        seen.append(f"classifier {row['name']}")
        return real_load(directory, row)

    monkeypatch.setitem(backbones.REGISTRY, "tiny", dataclasses.replace(TINY_SPEC, build=build))
    monkeypatch.setattr(classifiers, "load", load)
    return seen


def test_input_mistakes_are_refused_before_any_model_loads(indexed, loads, tmp_path):
    photos, index_dir = indexed
    one = next(photos.rglob("*.png"))
    text = tmp_path / "not_an_image.jpg"
    text.write_bytes(b"just some text, not an image")
    cases = [
        (["classify", tmp_path / "nothere.jpg"], "No such file"),
        (["query", text], "not an image"),
        (["query", tmp_path / "nothere.jpg"], "No such file"),
        (["explain", one, "--class", "notaclass", "--out", tmp_path / "x.png"], "not an ImageNet class"),
        (["explain", tmp_path / "nothere.jpg", "--out", tmp_path / "x.png"], "No such file"),
        (["explain", text, "--like", one, "--out", tmp_path / "x.png"], "not an image"),
        (["similarity", one, text], "not an image"),
        (["classify", text], "not an image"),
    ]
    for args, message in cases:
        r = run(*args, "--index", index_dir, ok=False)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert loads == [], (args, loads)
    # The same commands with good input do load what they need (the counter sees it).
    run("classify", one, "--index", index_dir)
    assert loads == ["classifier knn"]
    new = make_image(tmp_path / "new.png", seed=99)
    run("query", new, "--index", index_dir)
    assert loads == ["classifier knn", "backbone"]


def test_embed_with_every_shard_done_loads_no_model(photos, tmp_path, loads):
    pytest.importorskip("pyarrow")
    out = tmp_path / "shards"
    first = json.loads(run("embed", photos, "--out", out, *TINY, "--json").stdout)
    assert first["written"] == 1 and loads == ["backbone"]
    again = json.loads(run("embed", photos, "--out", out, *TINY, "--json").stdout)
    assert (again["written"], again["kept"], again["embedded"]) == (0, 1, 0) and loads == ["backbone"]
    # Anything to do (a new file), or another model asked for: the model is built, as before.
    make_image(photos / "a" / "new.png", seed=99)
    assert json.loads(run("embed", photos, "--out", out, *TINY, "--json").stdout)["written"] == 1
    assert loads == ["backbone", "backbone"]
    r = run("embed", photos, "--out", out, "--backbone", "tiny", "--weights", "none", "--seed", "8", ok=False)
    assert r.exit_code == 1 and "another model" in r.output


@pytest.fixture
def terminal(monkeypatch):
    """stderr as a terminal: what the CLI writes there, rich's control codes included."""
    from vecsearch.cli import output

    buf = io.StringIO()
    monkeypatch.setattr(output, "err", Console(file=buf, force_terminal=True, width=200))
    return buf


def test_a_status_line_shows_while_the_model_loads(indexed, tmp_path, terminal):
    photos, index_dir = indexed
    new = make_image(tmp_path / "new.png", seed=99)
    r = run("query", new, "--index", index_dir)
    assert "Loading tiny (random init, seed 7)" in terminal.getvalue() and "Loading" not in r.stdout
    terminal.seek(0)
    terminal.truncate()
    r = run("query", new, "--index", index_dir, "--json")  # never with --json
    assert "Loading" not in terminal.getvalue() and json.loads(r.stdout)
    # On a progress bar already showing (index of new files), the bar says it.
    make_image(photos / "b" / "new.png", seed=98)
    run("index", photos, "--index", index_dir)
    assert "Loading tiny (random init, seed 7)" in terminal.getvalue() and "Embedding" in terminal.getvalue()


def test_no_status_line_where_stderr_is_not_a_terminal(indexed, tmp_path):
    photos, index_dir = indexed
    r = run("query", make_image(tmp_path / "new.png", seed=99), "--index", index_dir)
    assert "Loading" not in r.stderr and "Loading" not in r.stdout
