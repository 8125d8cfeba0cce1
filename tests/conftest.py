"""Shared fixtures: images made on the spot, a tiny registered backbone, a temp index folder."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

import tiny_backbone  # noqa: E402,F401  (registers "tiny")


@pytest.fixture(autouse=True)
def _isolated_index_home(tmp_path_factory, monkeypatch):
    """Never touch the user's real default index."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv("VECSEARCH_INDEX", raising=False)


def make_image(path: Path, seed: int, size=(64, 48), fmt=None) -> Path:
    """A smooth random colour image (blobs, not noise, so JPEG and resizing behave like photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def run(*args, ok=True):
    """Invoke the CLI in-process; with ok, insist on exit code 0 (showing the output if not)."""
    from typer.testing import CliRunner

    from vecsearch.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_json(*args):
    import json

    return json.loads(run(*args, "--json").stdout)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of 12 small distinct photos in two sub-folders."""
    root = tmp_path / "photos"
    for i in range(12):
        sub = "a" if i < 6 else "b"
        ext = ".png" if i % 3 == 0 else ".jpg"
        make_image(root / sub / f"img{i:02d}{ext}", seed=i)
    return root


@pytest.fixture
def index_dir(tmp_path) -> Path:
    return tmp_path / "index"


@pytest.fixture
def tiny_index(index_dir):
    """Open an index on the tiny backbone with a seeded random init."""
    from vecsearch import open_index

    ix = open_index(index_dir, backbone="tiny", weights=None, seed=7)
    yield ix
    ix.close()
