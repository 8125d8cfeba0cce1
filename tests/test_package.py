"""The public surface, lazy heavy imports, and the migrations shipped in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

import vecsearch


def test_all_is_exactly_the_public_surface():
    """As httpx's test_exported_members: every public name of the package is in __all__ and nothing else.

    Submodules are reachable as attributes once imported, but they are not the API's names.
    """
    import types

    public = {
        name for name, value in vars(vecsearch).items() if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    public.add("Client")  # lazy (module __getattr__): it needs httpx, which a local index does not
    assert vecsearch.Client.__module__ == "vecsearch.client"
    assert len(vecsearch.__all__) == len(set(vecsearch.__all__))
    assert set(vecsearch.__all__) == public


def test_every_error_class_is_exported():
    import inspect

    from vecsearch import errors

    classes = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, errors.VecsearchError)}
    assert len(classes) >= 16 and classes <= set(vecsearch.__all__)


def test_the_index_object_is_usable_in_a_notebook(tiny_index, photos):
    assert repr(tiny_index).endswith(": empty>") and len(tiny_index) == 0
    tiny_index.add([photos])
    assert len(tiny_index) == 12 and "tiny, flat, 12 vectors" in repr(tiny_index)


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
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), root],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-200:]}")
    (wheel,) = tmp_path.glob("vecsearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "vecsearch/migrations/env.py" in names
    assert "vecsearch/migrations/script.py.mako" in names
    assert "vecsearch/migrations/versions/0001_initial.py" in names
    assert "vecsearch/imagenet_class_index.json" in names
