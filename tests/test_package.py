"""The public surface, lazy heavy imports, and the migrations shipped in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

import vecsearch


def test_public_names_exist():
    for name in vecsearch.__all__:
        assert hasattr(vecsearch, name), name
    assert {"open_index", "VecIndex", "VecsearchError"} <= set(vecsearch.__all__)


def test_import_and_help_load_no_heavy_modules():
    code = (
        "import sys, vecsearch, vecsearch.cli; "
        "from typer.testing import CliRunner; CliRunner().invoke(vecsearch.cli.app, ['--help']); "
        "print(','.join(m for m in ('tensorflow', 'keras', 'faiss', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_library_configures_no_logging_handlers():
    import logging

    assert not logging.getLogger("vecsearch").handlers


def test_wheel_ships_the_migrations(tmp_path):
    pytest.importorskip("setuptools")
    root = vecsearch.__file__.rsplit("/vecsearch/", 1)[0]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    (wheel,) = tmp_path.glob("vecsearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vecsearch/migrations/env.py" in names
    assert "vecsearch/migrations/script.py.mako" in names
    assert "vecsearch/migrations/versions/0001_initial.py" in names
    assert "vecsearch/imagenet_class_index.json" in names
