"""Tests for vecsearch.images: file discovery, decoding of every colour mode, and bad inputs."""

import hashlib
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image

from vecsearch import images
from vecsearch.config import MAX_IMAGE_PIXELS
from vecsearch.errors import BadImageError, InputNotFoundError
from vecsearch.files import file_sha256
from vecsearch.images import (
    LoadedImage,
    decode_image,
    image_extensions,
    is_image_file,
    iter_image_files,
    read_image_file,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    arr = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _reason(data: bytes, size=(16, 16), **kw) -> str:
    with pytest.raises(BadImageError) as info:
        decode_image(data, size, **kw)
    return info.value.reason


# ---------------------------------------------------------------- discovery


def test_extensions():
    # From Pillow's registry (what it can open), not a hand-written list; see test_formats.py for AVIF/HEIC.
    exts = image_extensions()
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif", ".heic", ".heif"} <= exts
    assert not {".h5", ".eps", ".ps", ".pdf", ".mpg", ".wmf", ".txt"} & exts  # stubs, PostScript, save-only


def test_is_image_file_by_extension_and_content(tmp_path):
    png = _encode(_noise(4, 4), "PNG")
    (tmp_path / "upper.JPG").write_bytes(b"whatever")
    assert is_image_file(tmp_path / "upper.JPG")
    assert is_image_file(tmp_path / "missing.png")  # extension alone decides, no read
    assert not is_image_file(tmp_path / "missing")
    for name, data in {
        "png": png,
        "jpeg": _encode(_noise(4, 4), "JPEG"),
        "gif": _encode(_noise(4, 4).convert("P"), "GIF"),
        "bmp": _encode(_noise(4, 4), "BMP"),
        "tiff": _encode(_noise(4, 4), "TIFF"),
        "webp": _encode(_noise(4, 4), "WEBP"),
    }.items():
        (tmp_path / name).write_bytes(data)
        assert is_image_file(tmp_path / name), name
    (tmp_path / "notes").write_text("BM is not a bitmap just because it starts like one\n")
    assert not is_image_file(tmp_path / "notes")
    (tmp_path / "notes.txt").write_bytes(png)  # content wins over a non-image extension
    assert is_image_file(tmp_path / "notes.txt")


@pytest.fixture
def tree(tmp_path):
    png = _encode(_noise(4, 4), "PNG")
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hiddendir").mkdir()
    (root / "b.png").write_bytes(png)
    (root / "a.png").write_bytes(png)
    (root / "readme.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(png)
    (root / ".hiddendir" / "d.png").write_bytes(png)
    (root / "sub" / "c.jpg").write_bytes(_encode(_noise(4, 4), "JPEG"))
    (root / "sub" / "noext").write_bytes(png)
    (root / "sub" / "notes").write_text("plain text")
    (root / "sub" / "deeper" / "e.gif").write_bytes(_encode(_noise(4, 4).convert("P"), "GIF"))
    return root


def test_iter_image_files_recurses_sorted_and_skips_hidden(tree):
    found = list(iter_image_files([tree]))
    rel = [p.relative_to(tree.resolve()).as_posix() for p in found]
    assert rel == ["a.png", "b.png", "sub/c.jpg", "sub/noext", "sub/deeper/e.gif"]
    assert all(p.is_absolute() for p in found)


def test_iter_image_files_no_duplicates_when_overlapping(tree):
    found = list(iter_image_files([tree, tree / "sub", str(tree / "a.png"), tree / "sub" / ".." / "b.png"]))
    assert len(found) == len(set(found)) == 5


def test_iter_image_files_explicit_files(tree):
    found = list(iter_image_files([tree / ".hidden.png", tree / "readme.txt", tree / "sub" / "noext"]))
    assert found == [(tree / ".hidden.png").resolve(), (tree / "sub" / "noext").resolve()]


def test_iter_image_files_missing_path_raises_before_yielding(tree):
    missing = tree / "nope"
    with pytest.raises(InputNotFoundError, match="No such file or folder"):
        iter_image_files([tree, missing])  # raises at call time, not at first next()
    with pytest.raises(InputNotFoundError):
        list(iter_image_files([missing]))


# ---------------------------------------------------------------- decoding


def test_png_matches_keras_load_img_exactly(tmp_path):
    keras_utils = pytest.importorskip("keras").utils
    path = tmp_path / "noise.png"
    _noise(97, 61, seed=3).save(path)
    target_hw = (37, 53)  # keras wants (height, width); non-square catches a swap
    expected = keras_utils.img_to_array(keras_utils.load_img(path, target_size=target_hw, interpolation="bilinear"))
    pixels, w, h = decode_image(path.read_bytes(), (53, 37), resample="bilinear")
    assert (w, h) == (97, 61)
    assert pixels.shape == (37, 53, 3) and pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(pixels.astype(np.float32), expected)


def test_full_size_when_size_is_none():
    src = _noise(13, 7)
    pixels, w, h = decode_image(_encode(src, "PNG"), None)
    assert (w, h) == (13, 7)
    np.testing.assert_array_equal(pixels, np.asarray(src))


def test_jpeg_uses_draft_and_stays_close_to_full_decode(monkeypatch):
    data = _encode(_gradient(800, 600), "JPEG", quality=95)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((100, 100), Image.Resampling.BILINEAR))
    cls = type(Image.open(io.BytesIO(data)))
    real = cls.draft
    calls = []

    def spy(self, mode, size):
        calls.append(size)
        return real(self, mode, size)

    monkeypatch.setattr(cls, "draft", spy)
    pixels, w, h = decode_image(data, (100, 100))
    assert calls == [(100, 100)]
    assert (w, h) == (800, 600)  # the original size, not the reduced draft size
    assert pixels.shape == (100, 100, 3)
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 3


def test_all_resample_names_accepted_and_unknown_rejected():
    data = _encode(_noise(20, 10), "PNG")
    for name in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
        assert decode_image(data, (7, 5), resample=name)[0].shape == (5, 7, 3)
    with pytest.raises(ValueError):
        decode_image(data, (7, 5), resample="cubic")


def test_cmyk_jpeg():
    data = _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    pixels, _, _ = decode_image(data, (8, 8))
    r, g, b = pixels.reshape(-1, 3).mean(axis=0)
    assert r > 220 and g < 40 and b < 40


def test_16bit_grayscale_png_is_scaled_not_clipped():
    arr = np.array([[0, 65535, 32768, 1000]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    pixels, w, h = decode_image(_encode(img, "PNG"), None)
    assert (w, h) == (4, 1)
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 255, 128, 4])
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_32bit_int_and_float_tiff():
    wide = Image.fromarray(np.array([[0, 65535, 32768]], dtype=np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(decode_image(_encode(wide, "TIFF"), None)[0][0, :, 0], [0, 255, 128])
    narrow = Image.fromarray(np.array([[0, 10, 200]], dtype=np.int32))
    np.testing.assert_array_equal(decode_image(_encode(narrow, "TIFF"), None)[0][0, :, 0], [0, 10, 200])
    floats = Image.fromarray(np.array([[-5.0, 100.4, 255.0]], dtype=np.float32))
    assert floats.mode == "F"
    np.testing.assert_array_equal(decode_image(_encode(floats, "TIFF"), None)[0][0, :, 0], [0, 100, 255])


def test_16bit_rgb_png():
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = np.array([[65535, 0, 32768]] * 2, dtype=">u2").tobytes()
    raw = (b"\x00" + row) * 2
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    pixels, _, _ = decode_image(data, None)
    np.testing.assert_array_equal(pixels[0, 0], [255, 0, 128])


def test_palette_png_with_transparency_becomes_white():
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (2, 0, 4, 2))
    pixels, _, _ = decode_image(_encode(img, "PNG", transparency=0), None)
    assert (pixels[:, :2] == 255).all()
    assert (pixels[:, 2:] == RED).all()


def test_rgba_and_la_alpha_zero_becomes_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)
    rgba[0, 1] = (255, 0, 0, 255)
    rgba[0, 2] = (0, 0, 0, 128)
    pixels, _, _ = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), None)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == RED
    assert 120 <= pixels[0, 2, 0] <= 135

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (50, 255))
    pixels, _, _ = decode_image(_encode(la, "PNG"), None)
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[0, 1]) == (50, 50, 50)


def test_grayscale_and_bilevel():
    pixels, _, _ = decode_image(_encode(Image.new("L", (3, 3), 77), "PNG"), (2, 2))
    assert pixels.shape == (2, 2, 3) and (pixels == 77).all()
    bilevel = Image.new("1", (8, 1), 0)
    bilevel.putpixel((7, 0), 1)
    pixels, _, _ = decode_image(_encode(bilevel, "PNG"), None)
    assert (pixels[0, :7] == 0).all() and (pixels[0, 7] == 255).all()


def _rotated_jpeg() -> bytes:
    """40x20 stored image, red top-left block, EXIF orientation 6 (display rotated 90 CW)."""
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(img, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_applied():
    pixels, w, h = decode_image(_rotated_jpeg(), None)
    assert (w, h) == (20, 40)
    assert pixels.shape == (40, 20, 3)
    top_right = pixels[:5, -5:].reshape(-1, 3).mean(axis=0)
    top_left = pixels[:5, :5].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[2] < 60  # the red corner moved top-left -> top-right
    assert top_left[2] > 200 and top_left[0] < 60


def test_exif_rotation_swaps_draft_size(monkeypatch):
    data = _rotated_jpeg()
    cls = type(Image.open(io.BytesIO(data)))
    real = cls.draft
    calls = []

    def spy(self, mode, size):
        calls.append(size)
        return real(self, mode, size)

    monkeypatch.setattr(cls, "draft", spy)
    pixels, w, h = decode_image(data, (5, 10))
    assert calls == [(10, 5)]  # requested in displayed orientation, drafted in stored one
    assert (w, h) == (20, 40) and pixels.shape == (10, 5, 3)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, (0, 255, 0), BLUE)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    pixels, w, h = decode_image(data, (4, 4))
    assert (w, h) == (8, 8)
    assert (pixels == RED).all()


def test_animated_webp_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    data = _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    pixels, _, _ = decode_image(data, None)
    assert (pixels == RED).all()


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_give_distinct_reasons():
    rng = np.random.default_rng(1)
    jpeg = _encode(_noise(128, 128), "JPEG", quality=90)
    reasons = {
        "empty": _reason(b""),
        "random": _reason(rng.bytes(4096)),
        "text": _reason(b"hello, I am a text file pretending to be a PNG\n" * 10),
        "truncated": _reason(jpeg[: len(jpeg) // 2]),
        "cap": _reason(_encode(_noise(100, 100), "PNG"), max_pixels=1000),
    }
    assert reasons["empty"] == "empty file"
    assert reasons["random"] == reasons["text"] == "not an image (unrecognised format)"
    assert reasons["truncated"].startswith("truncated or corrupt image:")
    assert "truncated" in reasons["truncated"]
    assert reasons["cap"] == "too large: 100x100 pixels exceeds the cap of 1000"


def test_huge_dimension_png_is_refused_cheaply():
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        # Beyond Pillow's own hard limit: Pillow refuses it while opening.
        reason = _reason(png_header_only(20000, 20000), max_pixels=MAX_IMAGE_PIXELS)
        assert reason == f"too large: 20000x20000 pixels exceeds the cap of {MAX_IMAGE_PIXELS}"
        # Between Pillow's warning threshold and its hard limit: our cap decides.
        reason = _reason(png_header_only(10000, 10000), max_pixels=50_000_000)
        assert reason == "too large: 10000x10000 pixels exceeds the cap of 50000000"
    assert Image.MAX_IMAGE_PIXELS == before


def test_read_image_file_ok(tmp_path):
    path = tmp_path / "x.png"
    _noise(30, 20).save(path)
    loaded = read_image_file(path, (10, 5))
    assert isinstance(loaded, LoadedImage)
    assert (loaded.width, loaded.height) == (30, 20)
    assert loaded.pixels.shape == (5, 10, 3)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    with pytest.raises(AttributeError):
        loaded.width = 3


def test_read_image_file_errors_carry_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(BadImageError) as info:
        read_image_file(empty, (8, 8))
    assert info.value.reason == "empty file" and info.value.path == str(empty)

    big = tmp_path / "big.png"
    _noise(30, 20).save(big)
    with pytest.raises(BadImageError) as info:
        read_image_file(big, (8, 8), max_bytes=100)
    assert info.value.reason.startswith("file too large:") and info.value.path == str(big)

    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(BadImageError) as info:
        read_image_file(folder, (8, 8))
    assert info.value.reason.startswith("unreadable:") and info.value.path == str(folder)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.os, "open", denied)
    with pytest.raises(BadImageError) as info:
        read_image_file(big, (8, 8))
    assert info.value.reason == "unreadable: Permission denied"


def test_file_sha256_streams_large_file(tmp_path):
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(2).bytes(3 * 1024 * 1024 + 17)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
