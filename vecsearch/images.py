"""Finding image files and turning their bytes into RGB pixel arrays.

Everything that can go wrong with one image becomes a BadImageError with a short
reason, so that indexing a folder skips and reports bad files instead of stopping.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .errors import BadImageError, InputNotFoundError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

# Same names and filters as keras.utils.load_img, so results match it exactly.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_CHUNK = 1024 * 1024
# BMP info-header sizes; checking one keeps text files that start with "BM" out.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def _has_image_signature(head: bytes) -> bool:
    """Whether the first bytes look like a format we decode; for files without an extension."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")):
        return True
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[:2] == b"BM" and len(head) >= 18:
        return int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES
    return False


def is_image_file(path: Path) -> bool:
    """True for an image extension (without reading), else if the content has an image signature."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False
    return _has_image_signature(head)


def iter_image_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Image files under the given files and folders, absolute, in a stable order, once each.

    All paths are checked up front so a typo fails at call time, before any work is done.
    """
    given = [Path(p) for p in paths]
    for p in given:
        if not os.path.exists(p):
            raise InputNotFoundError(f"No such file or folder: {p}")
    return _walk(given)


def _walk(given: list[Path]) -> Iterator[Path]:
    seen: set[Path] = set()

    def emit(candidate: Path) -> Iterator[Path]:
        resolved = candidate.resolve()
        if resolved not in seen:
            seen.add(resolved)
            yield resolved

    for p in given:
        if p.is_dir():
            yield from _walk_dir(p, emit)
        elif p.is_file():
            if is_image_file(p):
                yield from emit(p)
            else:
                logger.debug("skipping %s: not an image file", p)
        else:
            logger.debug("skipping %s: neither a regular file nor a folder", p)


def _walk_dir(root: Path, emit) -> Iterator[Path]:
    def on_error(exc: OSError) -> None:
        logger.warning("cannot list %s: %s", exc.filename, exc.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            candidate = Path(dirpath, name)
            # isfile also keeps out broken links and FIFOs, which would block on read.
            if candidate.is_file() and is_image_file(candidate):
                yield from emit(candidate)


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8); a broken EXIF block should not make a good image unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception as exc:  # noqa: BLE001 - any EXIF parsing failure
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1


def _to_uint8_gray(arr: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Scale high-bit-depth grey to 0..255; Pillow's own convert clips these to white."""
    if sixteen_bit:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
    if values.size and values.max() > 255:
        values = np.clip(values, 0, 65535) / 257.0
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparent areas shown on white."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _to_uint8_gray(np.asarray(img), sixteen_bit=mode in _SIXTEEN_BIT_MODES)
        return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)), "RGB")
    if img.has_transparency_data:
        if mode == "La":
            img = img.convert("LA")
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")


def _bomb_reason(exc: Exception, max_pixels: int | None) -> str:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match and (max_pixels is None or int(match.group(1)) > max_pixels):
        pixels = int(match.group(1))
        cap = max_pixels if max_pixels is not None else "Pillow's limit"
        return f"too large: {pixels} pixels exceeds the cap of {cap}"
    return f"too large: {exc}"


def _corrupt_reason(exc: Exception) -> str:
    message = str(exc).strip() or type(exc).__name__
    return f"truncated or corrupt image: {message}"


def decode_image(
    data: bytes,
    size: tuple[int, int] | None,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    resample: str = "bilinear",
    keep_aspect: bool = False,
) -> tuple[np.ndarray, int, int]:
    """Decode image bytes to a (h, w, 3) uint8 RGB array, resized like keras.utils.load_img.

    `size` is (width, height). Returns the array and the original width and height as the
    image is meant to be seen, i.e. after EXIF orientation. With keep_aspect the image is
    shrunk to fit inside `size` instead (thumbnails), never enlarged.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; use one of {', '.join(_RESAMPLE)}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"size must be positive, got {size}")
    if not data:
        raise BadImageError("empty file")

    # catch_warnings keeps the global Image.MAX_IMAGE_PIXELS untouched. At open time the
    # warning is about the header size, which our own cap judges; during load it is about
    # something else (a TIFF tile, a GIF frame) and is treated as a bomb.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise BadImageError("not an image (unrecognised format)") from exc
        except Image.DecompressionBombError as exc:
            raise BadImageError(_bomb_reason(exc, max_pixels)) from exc
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad headers
            raise BadImageError(_corrupt_reason(exc)) from exc

    with img:
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise BadImageError(
                f"too large: {width}x{height} pixels exceeds the cap of {max_pixels}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                return _decode_opened(img, size, width, height, _RESAMPLE[resample], keep_aspect)
            except BadImageError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise BadImageError(_bomb_reason(exc, max_pixels)) from exc
            except MemoryError as exc:
                raise BadImageError("too large: out of memory while decoding") from exc
            except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
                raise BadImageError(_corrupt_reason(exc)) from exc


def _decode_opened(
    img: Image.Image,
    size: tuple[int, int] | None,
    width: int,
    height: int,
    resample: Image.Resampling,
    keep_aspect: bool = False,
) -> tuple[np.ndarray, int, int]:
    if size is not None and img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the target: much faster,
        # and the resize that follows hides the difference. The draft size is in stored
        # orientation, so a 90/270 degree EXIF rotation swaps the target.
        tw, th = size
        if _orientation(img) in (5, 6, 7, 8):
            tw, th = th, tw
        img.draft("RGB", (tw, th))
    img.load()  # frame 0 for animated GIF/WebP
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
    img = _to_rgb(img)
    if size is not None and keep_aspect:
        img.thumbnail(size, resample)
    elif size is not None and img.size != size:
        img = img.resize(size, resample)
    pixels = np.array(img, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise BadImageError(f"truncated or corrupt image: unexpected pixel shape {pixels.shape}")
    return np.ascontiguousarray(pixels), width, height


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """Decoded pixels plus what the index records about the file."""

    pixels: np.ndarray
    width: int
    height: int
    sha256: str


def read_image_file(
    path: Path,
    size: tuple[int, int] | None,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    resample: str = "bilinear",
) -> LoadedImage:
    """Read a file once, hash and decode those same bytes, so the hash matches the pixels."""
    data = _read_capped(path, max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels, width, height = decode_image(
            data, size, max_pixels=max_pixels, resample=resample
        )
    except BadImageError as exc:
        raise BadImageError(exc.reason, path=str(path)) from exc
    return LoadedImage(pixels=pixels, width=width, height=height, sha256=digest)


def thumbnail_jpeg(
    path: Path,
    side: int,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    quality: int = 85,
) -> bytes:
    """JPEG bytes of the image shrunk to fit side x side, read with the same caps and fixes."""
    try:
        pixels, _, _ = decode_image(
            _read_capped(path, max_bytes), (side, side), max_pixels=max_pixels, keep_aspect=True
        )
    except BadImageError as exc:
        raise BadImageError(exc.reason, path=str(path)) from exc
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def read_bytes(path: str | os.PathLike, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """An image file's bytes under the byte cap; BadImageError (with the path) when over it or unreadable."""
    return _read_capped(Path(path), max_bytes)


def _read_capped(path: Path, max_bytes: int) -> bytes:
    try:
        st = os.stat(path)
        if st.st_size > max_bytes:
            raise BadImageError(
                f"file too large: {st.st_size} bytes exceeds the cap of {max_bytes}", path=str(path)
            )
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise BadImageError(f"unreadable: {exc.strerror or exc}", path=str(path)) from exc
    if len(data) > max_bytes:  # the file grew after the stat
        raise BadImageError(
            f"file too large: more than {max_bytes} bytes exceeds the cap of {max_bytes}",
            path=str(path),
        )
    return data


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest without holding the whole file in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
