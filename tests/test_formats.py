"""Image formats beyond Pillow's core: AVIF and HEIC (the heif extra) index and query, found by
content too, say the install line when the extra is missing, and keep the pixel cap.

Files are written by Pillow (or pillow-heif) itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINY, make_image, run_json

from vecsearch import VecsearchError, open_index
from vecsearch.extras import install_line


def _write(path, seed, fmt):
    """A photo-like image written by Pillow (or pillow-heif) in `fmt`."""
    from vecsearch import images

    images.heif_available()  # registers pillow-heif's opener and saver when installed
    return make_image(path, seed=seed, size=(64, 48), fmt=fmt)


@pytest.mark.skipif(not __import__("PIL.features").features.check("avif"), reason="this Pillow has no AVIF")
def test_an_avif_folder_indexes_and_queries(tmp_path, index_dir):
    for i in range(3):
        _write(tmp_path / "avif" / f"p{i}.avif", i, "AVIF")
    _write(tmp_path / "avif" / "noext", 5, "AVIF")  # found by its content too
    s = run_json("index", tmp_path / "avif", "--index", index_dir, *TINY)
    assert s["indexed"] == 4 and s["failed"] == []
    hits = run_json("query", tmp_path / "avif" / "p0.avif", "--index", index_dir)
    assert len(hits) == 3
    with open_index(index_dir) as ix:  # a stored vector equals embedding the same file as a query
        (rec,) = [r for r in ix if r.path.endswith("p1.avif")]
        np.testing.assert_allclose(ix.vector(rec.id), ix.embed([tmp_path / "avif" / "p1.avif"])[0], atol=1e-5)


def test_heic_indexes_with_the_extra(tmp_path, index_dir):
    pytest.importorskip("pillow_heif")
    for i in range(2):
        _write(tmp_path / "phone" / f"IMG_{i}.HEIC", i, "HEIF")
    make_image(tmp_path / "phone" / "x.jpg", seed=9)
    s = run_json("index", tmp_path / "phone", "--index", index_dir, *TINY)
    assert s["indexed"] == 3 and s["failed"] == []
    hits = run_json("query", tmp_path / "phone" / "IMG_0.HEIC", "--index", index_dir, "--k", 5)
    assert {h["path"] for h in hits} == {str(tmp_path / "phone" / n) for n in ("IMG_1.HEIC", "x.jpg")}


def test_heic_without_the_extra_names_the_install_line(tmp_path, index_dir):
    """In a fresh process where pillow_heif cannot be imported: a failed row and a query error with the line."""
    import subprocess
    import sys

    pytest.importorskip("pillow_heif")
    _write(tmp_path / "phone" / "IMG_0.heic", 0, "HEIF")
    make_image(tmp_path / "phone" / "x.jpg", seed=9)
    script = (
        "import sys, json; sys.modules['pillow_heif'] = None; sys.path.insert(0, sys.argv[1]);"
        "import tiny_backbone; from typer.testing import CliRunner; from vecsearch.cli import app;"
        "r = CliRunner().invoke(app, ['index', sys.argv[2], '--index', sys.argv[3], '--backbone', 'tiny',"
        " '--weights', 'none', '--seed', '7', '--json']); print(r.stdout);"
        "q = CliRunner().invoke(app, ['query', sys.argv[2] + '/IMG_0.heic', '--index', sys.argv[3]]);"
        "print('EXIT', q.exit_code); print(q.output)"
    )
    tests = str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", script, tests, str(tmp_path / "phone"), str(index_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = json.loads(out.stdout[: out.stdout.index("EXIT")])
    assert summary["indexed"] == 1
    (failed,) = summary["failed"]
    assert failed["path"].endswith("IMG_0.heic") and install_line("heif") in failed["reason"]
    tail = out.stdout[out.stdout.index("EXIT") :]
    assert tail.startswith("EXIT 1") and install_line("heif") in tail, tail


@pytest.mark.parametrize("fmt, ext", [("AVIF", ".avif"), ("HEIF", ".heic")])
def test_new_formats_keep_the_pixel_cap_before_decoding(tmp_path, fmt, ext):
    from vecsearch import images

    if fmt == "AVIF" and not __import__("PIL.features").features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    data = _write(tmp_path / f"x{ext}", 3, fmt).read_bytes()
    pixels, w, h = images.decode_image(data, (32, 32))
    assert pixels.shape == (32, 32, 3) and (w, h) == (64, 48)
    with pytest.raises(VecsearchError, match="too large: 64x48 pixels exceeds the cap of 3000"):
        images.decode_image(data, (32, 32), max_pixels=3000)
    assert images.is_image_file(tmp_path / f"x{ext}")
    (tmp_path / "noext").write_bytes(data)
    assert images.is_image_file(tmp_path / "noext")  # by its ftyp signature
