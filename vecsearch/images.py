"""Finding image files and turning their bytes into RGB pixel arrays.

Everything that can go wrong with one image becomes a BadImageError with a short
reason, so that indexing a folder lists bad files instead of stopping. Every file is
read through the guarded reader of `files.py` (regular files only, a byte cap, a time
limit), so a FIFO, a socket or a device is reported, never waited on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import os
import re
import stat
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DECODE_MEMORY_BUDGET, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from .errors import BadImageError, InputNotFoundError, VecsearchError
from .extras import install_line
from .files import absolute, file_kind, os_reason, read_file, read_head

logger = logging.getLogger(__name__)

HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heics", ".heif", ".heifs", ".hif"})
# Registered by Pillow but no image to index here: stubs that identify a file without
# decoding it (scientific containers, Windows metafiles, video), and PostScript, which
# Pillow decodes by running Ghostscript on the file -- a program, not an image.
_NOT_INDEXED_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS"})


@functools.lru_cache(maxsize=1)
def heif_available() -> bool:
    """Whether HEIC/HEIF files can be read: pillow-heif (the `heif` extra) registers its opener, once."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


@functools.lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """File extensions walked as images: Pillow's own registry, limited to formats it can open.

    So `index` walks exactly what `query` can read (AVIF included where Pillow has it).
    HEIC/HEIF is always walked: without the `heif` extra such a file becomes a failed row
    that names the install line, instead of being silently skipped.
    """
    heif_available()
    Image.init()
    openable = {fmt for fmt in Image.OPEN if fmt not in _NOT_INDEXED_FORMATS} | {"MPO"}  # MPO opens as JPEG
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in openable) | HEIF_EXTENSIONS


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
    if _iso_brand(head) is not None:
        return True
    if head[:2] == b"BM" and len(head) >= 18:
        return int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES
    return False


# ISO base media files (`ftyp` box first) holding still images: AVIF and HEIF/HEIC.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})


def _iso_brand(head: bytes) -> str | None:
    """ "avif" or "heif" for an AVIF or HEIF file's first bytes (its major brand), else None."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    brand = head[8:12]
    return "avif" if brand in _AVIF_BRANDS else "heif" if brand in _HEIF_BRANDS else None


# -- finding image files -------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    """True for an image extension (without reading), else if the content has an image signature."""
    path = Path(path)
    if path.suffix.lower() in image_extensions():
        return True
    return _has_image_signature(read_head(path, 32))


def check_globs(globs: Iterable[str]) -> list[str]:
    """Exclude globs cleaned (a trailing "/" dropped, duplicates once, order kept); an empty one is refused."""
    out: list[str] = []
    for g in globs:
        if not isinstance(g, str) or not g.strip().rstrip("/"):
            raise VecsearchError(f"An exclude pattern must be a non-empty glob such as '*.tmp' or 'thumbs', got {g!r}.")
        g = g.strip().rstrip("/")
        if g not in out:
            out.append(g)
    return out


def is_excluded(path: Path, roots: list[Path], globs: list[str]) -> bool:
    """Whether an exclude glob matches the file (fnmatch, case-sensitive, `*` crosses "/").

    A glob is tried on the file's name (`*.tmp`), on each folder name between the root
    given to `add` and the file (`thumbs`, `@eaDir`), on the path relative to that root
    (`raw/*`, `*/cache/*`) and on the absolute path (`/photos/old/*`).
    """
    if not globs:
        return False
    import fnmatch

    text = str(path)
    rel = path.name
    for r in roots:
        prefix = str(r).rstrip(os.sep) + os.sep
        if text.startswith(prefix):
            rel = text[len(prefix) :]
            break
    parts = rel.split(os.sep)
    candidates = [text, rel, *parts]
    return any(fnmatch.fnmatchcase(c, g) for g in globs for c in candidates)


@dataclass(frozen=True)
class Found:
    """One thing met while walking: an image file to read, or why it cannot be one."""

    path: Path
    reason: str | None = None  # None: a candidate image file
    unseen_below: bool = False  # a folder that could not be listed: what the index has under it is kept


def iter_image_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Image files under the given files and folders, absolute, in a stable order, once each.

    All paths are checked up front so a typo fails at call time, before any work is done.
    """
    found = scan(paths)
    return (f.path for f in found if f.reason is None)


def scan(paths: Iterable[str | os.PathLike], exclude: Sequence[str] = ()) -> Iterator[Found]:
    """Everything `iter_image_files` finds, plus what cannot be read as an image file, with why.

    Under a folder, FIFOs, sockets, devices, broken links, link loops, unlistable folders
    and folders named like images (`x.jpg/`) come with a reason instead of being skipped.
    Paths are absolute as given (`absolute`): links are followed but never resolved.
    Files and folders an `exclude` glob matches (`is_excluded`) are skipped, an excluded
    folder without being listed.
    """
    given = [absolute(p) for p in paths]
    for p in given:
        if not os.path.lexists(p):
            raise InputNotFoundError(f"No such file or folder: {p}")
    globs = list(exclude)
    skip = (lambda path: is_excluded(path, given, globs)) if globs else (lambda path: False)
    return _walk(given, skip)


def _walk(given: list[Path], skip) -> Iterator[Found]:
    seen: set[str] = set()

    def emit(found: Found, checked: bool = False) -> Iterator[Found]:
        """`found` once; `skip` applies here to what `_walk_dir` has not already checked
        (a path given by name, or a given folder that cannot be listed)."""
        if str(found.path) not in seen and (checked or not skip(found.path)):
            seen.add(str(found.path))
            yield found

    for p in given:
        if not storable(p):
            shown = os.fsencode(p).decode("utf-8", "backslashreplace")
            yield from emit(Found(Path(shown), "unreadable: the name is not valid UTF-8; rename it"))
            continue
        try:
            st = os.stat(p)
        except OSError as exc:
            yield from emit(Found(p, os_reason(exc, p)))
            continue
        if stat.S_ISDIR(st.st_mode):  # a folder given by name is walked, whatever its name
            for found in _walk_dir(p, [(st.st_dev, st.st_ino)], skip):
                yield from emit(found, checked=found.path != p)
        elif stat.S_ISREG(st.st_mode):
            if is_image_file(p):
                yield from emit(Found(p))
            else:
                logger.debug("skipping %s: not an image file", p)
        else:
            yield from emit(Found(p, f"unreadable: {file_kind(st.st_mode)}"))


def storable(name: str | os.PathLike) -> bool:
    """Whether a path can be stored in the index (its name is valid UTF-8, as SQLite text is)."""
    name = os.fspath(name)
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes of the file name, kept as surrogates
        return False


def _walk_dir(folder: Path, above: list[tuple[int, int]], skip=lambda path: False) -> Iterator[Found]:
    """A folder's files sorted by name, then its sub-folders (as `os.walk`); hidden entries
    skipped; links to folders are followed unless they point back at a folder above (a loop)."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        yield Found(folder, f"unreadable: cannot list this folder: {exc.strerror or exc}", unseen_below=True)
        return
    subfolders: list[tuple[Path, os.stat_result]] = []
    for entry in entries:
        path = Path(entry.path)
        if skip(path):
            continue
        if not storable(entry.name):
            # SQLite stores text as UTF-8: such a name cannot be stored, so it is listed under
            # an escaped spelling (not the real name) and nothing below it is read.
            shown = os.fsencode(entry.path).decode("utf-8", "backslashreplace")
            yield Found(Path(shown), "unreadable: the name is not valid UTF-8; rename it")
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            yield Found(path, os_reason(exc, path))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in above:
                yield Found(path, "unreadable: a symbolic link loop (a link to a folder above it)")
                continue
            if path.suffix.lower() in image_extensions():
                yield Found(path, "unreadable: a folder, not a file (the images inside it are indexed)")
            subfolders.append((path, st))
        elif stat.S_ISREG(st.st_mode):
            if is_image_file(path):
                yield Found(path)
        else:
            yield Found(path, f"unreadable: {file_kind(st.st_mode)}")
    for path, st in subfolders:
        yield from _walk_dir(path, [*above, (st.st_dev, st.st_ino)], skip)


# -- opening and decoding --------------------------------------------------------------------
def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8); a broken EXIF block should not make a good image unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception as exc:  # noqa: BLE001 - any EXIF parsing failure
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1


def _to_uint8_gray(arr: np.ndarray, sixteen_bit: bool, scale_down: bool | None = None) -> np.ndarray:
    """Scale high-bit-depth grey to 0..255; Pillow's own convert clips these to white.

    `scale_down` (values above 255 present) is decided over the whole image by the caller
    when it converts in strips; else here, from `arr`.
    """
    if sixteen_bit:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=65535.0, neginf=0.0)
    if scale_down is None:
        scale_down = bool(values.size and values.max() > 255)
    if scale_down:
        values = np.clip(values, 0, 65535) / 257.0
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


def _to_rgb(img: Image.Image, scale_down: bool | None = None) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, transparent areas shown on white."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        gray = _to_uint8_gray(np.asarray(img), mode in _SIXTEEN_BIT_MODES, scale_down)
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


def _open_unchecked(data: bytes) -> Image.Image:
    """`Image.open` without Pillow's process-wide bomb check, which our own cap replaces.

    Pillow judges the header size against the global `Image.MAX_IMAGE_PIXELS` and warns
    through the global warnings machinery; neither can be changed per call or per thread,
    so the cap was applied at random across decode threads. Here the registered format
    openers are tried in Pillow's own order and the caller checks the size itself.
    """
    heif_available()
    Image.init()
    fp = io.BytesIO(data)
    prefix = data[:16]
    for fmt in list(Image.ID):
        factory, accept = Image.OPEN[fmt]
        ok = accept(prefix) if accept else True
        if not ok or isinstance(ok, str):
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError("cannot identify image file")


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


class _MemoryBudget:
    """Bytes that decodes in this process may hold at once; a decode waits for its share.

    One decode larger than the whole budget still runs, alone. So peak memory is about
    the budget however many threads decode, instead of threads x the largest image.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        n = max(0, min(int(nbytes), self.capacity))
        with self._cond:
            while self.used and self.used + n > self.capacity:
                self._cond.wait()
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _return_freed_memory() -> None:
    """Hand memory freed by a large decode back to the OS (glibc keeps it per thread otherwise).

    Each decode thread has its own malloc arena; without this, four threads that decoded
    one 110 MP image each in turn still held 1.6 GB, measured, instead of 0.6 GB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


DECODE_BUDGET = _MemoryBudget(DECODE_MEMORY_BUDGET)
"""Shared by every decode of the process (indexing threads, queries, uploads, thumbnails)."""

BYTES_PER_PIXEL = 5
"""What a large decode costs at most, per decoded pixel: Pillow's 4-byte pixels plus strips."""
STRIP_MIN_PIXELS = 8_000_000
"""Images larger than this are converted and resized in strips, never copied whole."""
_STRIP_BYTES = 16 * 1024 * 1024
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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

    The pixel cap is checked on the header before anything is decoded, the same way in
    every thread. For thumbnails (keep_aspect) it applies to the pixels actually decoded:
    a JPEG decoded at reduced scale (`draft`) counts at that scale.
    """
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resample {resample!r}; use one of {', '.join(_RESAMPLE)}")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"size must be positive, got {size}")
    if not data:
        raise BadImageError("empty file")
    try:
        img = _open_unchecked(data)
    except UnidentifiedImageError as exc:
        if _iso_brand(data[:16]) == "heif" and not heif_available():
            raise BadImageError(f"a HEIC/HEIF image, which needs the heif extra: {install_line('heif')}") from exc
        raise BadImageError("not an image (unrecognised format)") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError(_bomb_reason(exc, max_pixels)) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on bad headers
        raise BadImageError(_corrupt_reason(exc)) from exc

    with img:
        width, height = img.size
        if not keep_aspect and max_pixels is not None and width * height > max_pixels:
            raise BadImageError(f"too large: {width}x{height} pixels exceeds the cap of {max_pixels}")
        try:
            orientation = None  # read inside the budget: for a PNG, finding EXIF decodes the image
            if size is not None and img.format == "JPEG":
                orientation = _orientation(img)
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the target: much faster,
                # and the resize that follows hides the difference. The draft size is in stored
                # orientation, so a 90/270 degree EXIF rotation swaps the target.
                tw, th = size
                if orientation in (5, 6, 7, 8):
                    tw, th = th, tw
                img.draft("RGB", (tw, th))
            decoded = img.size[0] * img.size[1]
            if keep_aspect and max_pixels is not None and decoded > max_pixels:
                raise BadImageError(f"too large: {width}x{height} pixels exceeds the cap of {max_pixels}")
            with DECODE_BUDGET.reserve(decoded * BYTES_PER_PIXEL):
                try:
                    if orientation is None:
                        orientation = _orientation(img)
                    return _decode_opened(img, size, width, height, _RESAMPLE[resample], keep_aspect, orientation)
                finally:
                    img.close()  # free the decoded pixels before the next decode may start
                    if decoded > STRIP_MIN_PIXELS:
                        _return_freed_memory()
        except BadImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise BadImageError(_bomb_reason(exc, max_pixels)) from exc
        except MemoryError as exc:
            raise BadImageError("too large: out of memory while decoding") from exc
        except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
            raise BadImageError(_corrupt_reason(exc)) from exc


def _fit_inside(w: int, h: int, box: tuple[int, int]) -> tuple[int, int]:
    """The size `Image.thumbnail` gives a w x h image shrunk to fit `box` (never enlarged)."""
    x, y = box
    if x >= w and y >= h:
        return w, h
    aspect = w / h

    def round_aspect(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _decode_opened(
    img: Image.Image,
    size: tuple[int, int] | None,
    width: int,
    height: int,
    resample: Image.Resampling,
    keep_aspect: bool = False,
    orientation: int = 1,
) -> tuple[np.ndarray, int, int]:
    img.load()  # frame 0 for animated GIF/WebP
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    stored_w, stored_h = img.size
    if stored_w * stored_h > STRIP_MIN_PIXELS and (img.mode != "RGB" or orientation != 1):
        pixels = _decode_in_strips(img, size, resample, keep_aspect, orientation)
    else:
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


def _decode_in_strips(
    img: Image.Image, size: tuple[int, int] | None, resample: Image.Resampling, keep_aspect: bool, orientation: int
) -> np.ndarray:
    """Convert (and resize) a large decoded image a strip of rows at a time.

    Mode conversion, compositing on white and EXIF rotation of the whole image would each
    make full-size copies (~15 bytes a pixel for RGBA, measured). Here only the decoded
    image is full size. Pillow resizes in two passes, each row horizontally, then each
    column; so each strip is converted and resized horizontally on its own, the narrow
    strips are stacked, and the vertical pass runs on that: the same pixels as resizing
    the whole converted image. The EXIF rotation is applied to the small result.
    """
    W, H = img.size
    rotated = orientation in (5, 6, 7, 8)
    seen = (H, W) if rotated else (W, H)
    if size is None:
        out_seen = seen
    elif keep_aspect:
        out_seen = _fit_inside(*seen, size)
    else:
        out_seen = size
    ow, oh = (out_seen[1], out_seen[0]) if rotated else out_seen  # in stored orientation
    scale_down = None
    if img.mode in ("I", "F"):  # whether to scale grey values down is decided once, over the whole image
        _, hi = img.getextrema()
        assert not isinstance(hi, tuple)  # one band ("I", "F"): (min, max), not a pair a band
        scale_down = bool(hi is not None and not math.isnan(hi) and hi > 255)
    rows = max(1, _STRIP_BYTES // (W * 4))
    if (ow, oh) == (W, H):
        out = np.empty((H, W, 3), np.uint8)
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            out[r0:r1] = np.asarray(_to_rgb(img.crop((0, r0, W, r1)), scale_down))
    else:
        narrow = Image.new("RGB", (ow, H))
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            part = _to_rgb(img.crop((0, r0, W, r1)), scale_down)
            if ow != W:
                part = part.resize((ow, r1 - r0), resample)  # the horizontal pass: rows are independent
            narrow.paste(part, (0, r0))
        out = np.asarray(narrow.resize((ow, oh), resample) if oh != H else narrow)
    if orientation != 1:
        out = np.asarray(Image.fromarray(out, "RGB").transpose(_TRANSPOSE[orientation]))
    return out


def image_format(data: bytes) -> str | None:
    """Pillow's name for the format of image bytes ("JPEG", "PNG", ...), read from the header; None if unknown."""
    try:
        with _open_unchecked(data) as img:
            return img.format
    except Exception:  # noqa: BLE001 -- any failure to identify means "unknown"
        return None


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
    data = read_file(path, max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    try:
        pixels, width, height = decode_image(data, size, max_pixels=max_pixels, resample=resample)
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
    """JPEG bytes of the image shrunk to fit side x side, read with the same caps and fixes.

    `max_pixels` caps the pixels decoded: a big JPEG is decoded at reduced scale and
    passes, a big PNG is refused before it is decoded.
    """
    try:
        pixels, _, _ = decode_image(read_file(path, max_bytes), (side, side), max_pixels=max_pixels, keep_aspect=True)
    except BadImageError as exc:
        raise BadImageError(exc.reason, path=str(path)) from exc
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
