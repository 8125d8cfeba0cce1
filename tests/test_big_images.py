"""Huge images from tiny files: indexing stays within the memory budget, large decodes go in strips
(with the same pixels) under one shared budget, and the pixel cap gives one answer in every
thread and every run. The server's share (thumbnail memory) is in test_server.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TESTS, big_png, make_image, png_header_only

from vecsearch import images, open_index

GiB = 1024**3


_PEAK = """
import resource, sys
sys.path.insert(0, {tests!r})
import tiny_backbone
from vecsearch import open_index
with open_index({index!r}, backbone="tiny", weights=None, seed=7, workers=4) as ix:
    s = ix.add([{folder!r}])
print(s.indexed, len(s.failed), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def _indexing_peak(folder: Path, index: Path) -> tuple[int, int, int]:
    """(indexed, failed, peak RSS in bytes) of indexing `folder` in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _PEAK.format(tests=str(TESTS), index=str(index), folder=str(folder))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    indexed, failed, peak = map(int, out.stdout.split()[-3:])
    return indexed, failed, peak


@pytest.mark.slow
def test_indexing_four_huge_rgba_pngs_stays_within_the_memory_budget(tmp_path):
    make_image(tmp_path / "small" / "a.png", 0)
    for i in range(4):  # 110 MP RGBA each, ~430 KB on disk
        big_png(tmp_path / "big" / f"b{i}.png", 11000, 10000)
    _, _, base = _indexing_peak(tmp_path / "small", tmp_path / "ix1")
    indexed, failed, peak = _indexing_peak(tmp_path / "big", tmp_path / "ix2")
    assert (indexed, failed) == (4, 0)
    print(
        f"peak RSS: one small image {base / 2**20:.0f} MiB, four 110 MP RGBA PNGs {peak / 2**20:.0f} MiB "
        f"(+{(peak - base) / 2**20:.0f} MiB)"
    )
    assert peak - base < 1.5 * GiB


def _mode_image(mode: str):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").resize((800, 600), Image.BILINEAR)
    if mode == "I;16":
        return Image.fromarray(np.asarray(rgba)[..., 0].astype(np.uint16) * 200)
    if mode == "F":
        return Image.fromarray(np.asarray(rgba)[..., 0].astype(np.float32) * 3.0, "F")
    if mode == "P":
        p = rgba.convert("RGB").convert("P")
        p.info["transparency"] = 3
        return p
    return rgba.convert(mode)


@pytest.mark.parametrize(
    "mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("F", "TIFF"), ("CMYK", "TIFF"), ("L", "PNG")]
)
def test_a_large_decode_in_strips_gives_the_same_pixels(monkeypatch, mode, fmt):
    import io

    buf = io.BytesIO()
    _mode_image(mode).save(buf, fmt)
    data = buf.getvalue()
    sizes = [((224, 224), False), (None, False), ((100, 100), True)]
    whole = [images.decode_image(data, size, keep_aspect=keep)[0] for size, keep in sizes]
    monkeypatch.setattr(images, "STRIP_MIN_PIXELS", 1000)
    monkeypatch.setattr(images, "_STRIP_BYTES", 800 * 4 * 37)  # many strips of 37 rows
    strips = [images.decode_image(data, size, keep_aspect=keep)[0] for size, keep in sizes]
    np.testing.assert_array_equal(whole[0], strips[0])  # the model's input: exactly the same
    np.testing.assert_array_equal(whole[1], strips[1])
    assert whole[2].shape == strips[2].shape  # thumbnails: whole images use Pillow's reducing shortcut
    assert np.abs(whole[2].astype(int) - strips[2]).mean() < 2


def test_large_decodes_share_one_memory_budget(monkeypatch):
    budget = images._MemoryBudget(100)
    order: list[str] = []
    inside = threading.Event()

    def big(name, n):
        with budget.reserve(n):
            order.append(f"{name} in")
            inside.set()
            time.sleep(0.2)
            order.append(f"{name} out")

    a = threading.Thread(target=big, args=("a", 80))
    a.start()
    inside.wait(5)
    b = threading.Thread(target=big, args=("b", 80))  # must wait for a
    c = threading.Thread(target=big, args=("c", 10))  # fits beside a
    b.start()
    c.start()
    for t in (a, b, c):
        t.join(10)
    assert order.index("b in") > order.index("a out")
    assert order.index("c in") < order.index("a out")
    huge = images._MemoryBudget(100)
    with huge.reserve(10**9):  # larger than the budget: runs, alone
        assert huge.used == 100


# -- the pixel cap, the same in every thread and every run ------------------------------------
@pytest.mark.slow
def test_the_pixel_cap_gives_the_same_answer_in_every_thread_and_run(tmp_path):
    """Pillow's own check (a process-wide limit, a warning through process-wide filters) once
    decided images between 89.5 and 120 MP at random when threads decoded side by side."""
    root = tmp_path / "p"
    root.mkdir()
    for i in range(16):  # by name, each 100 MP header (slow to open) is opened while the other thread decodes a small image
        (root / f"{i:02d}a-under.png").write_bytes(png_header_only(10000, 10000, colour_type=0, padding=2000))
        make_image(root / f"{i:02d}b-ok.png", i)
    for i in range(2):
        (root / f"{i}c-over.png").write_bytes(png_header_only(11000, 11000, colour_type=0))
    outcomes = set()
    for n in range(10):
        with open_index(tmp_path / f"ix{n}", backbone="tiny", weights=None, seed=7, workers=2) as ix:
            s = ix.add([root])
        outcomes.add(tuple(sorted((Path(f.path).name, f.reason) for f in s.failed)))
    assert len(outcomes) == 1, [sorted(set(o) - set.intersection(*map(set, outcomes))) for o in outcomes]
    failed = dict(outcomes.pop())
    assert len(failed) == 18 and not any("89478485" in r for r in failed.values())
    for name, reason in failed.items():
        if "over" in name:
            assert reason == "too large: 11000x11000 pixels exceeds the cap of 120000000"
        else:  # decoded, then found to be missing its data: never refused by size
            assert reason.startswith("truncated or corrupt image"), reason
