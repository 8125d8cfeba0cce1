"""Thumbnails of indexed files: made once per (file state, size), kept in a bounded LRU cache.

Concurrent requests for the same thumbnail wait for the one decode in progress instead of
decoding it again; the cache is bounded by bytes, not entries, since sizes range 16-1024 px.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .. import images
from ..api import VecIndex
from ..errors import NotIndexedError

THUMB_SIZES = (16, 1024)
THUMB_CACHE_BYTES = 32 * 1024 * 1024
"""Thumbnails kept in memory, by their total size in bytes (least recently used dropped first)."""

_Key = tuple[int, str, int, int, int]


class ThumbnailCache:
    """JPEG thumbnails of one index's files, under a pixel cap."""

    def __init__(self, index: VecIndex, *, max_pixels: int, max_bytes: int = THUMB_CACHE_BYTES):
        self.index = index
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._cache: OrderedDict[_Key, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._making: dict[_Key, threading.Event] = {}  # thumbnails being made: one decode per key

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._bytes = 0

    def get(self, image_id: int, size: int, if_none_match: str | None = None) -> tuple[bytes | None, str]:
        """(JPEG bytes, ETag) of an indexed file, found by id only; cached while the file is unchanged.

        The bytes are None when `if_none_match` is the ETag: a revalidation decodes nothing.
        """
        rec = self.index.image(image_id)
        try:
            st = os.stat(rec.path)
        except OSError:
            raise NotIndexedError(f"The file of image {image_id} is no longer at {rec.path}.") from None
        key = (image_id, rec.path, st.st_size, st.st_mtime_ns, size)
        etag = f'"{rec.sha256 or image_id}-{st.st_size}-{st.st_mtime_ns}-{size}"'
        if if_none_match == etag:
            return None, etag
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], etag
            making = self._making.get(key)
            if making is None:
                self._making[key] = threading.Event()
        if making is not None:
            making.wait()  # another request is decoding this one: take its result
            with self._lock:
                if key in self._cache:
                    return self._cache[key], etag
            return self._make(key, rec.path, size), etag  # it failed: fail the same way
        try:
            return self._make(key, rec.path, size), etag
        finally:
            with self._lock:
                self._making.pop(key).set()

    def _make(self, key: _Key, path: str, size: int) -> bytes:
        # The service's pixel cap, not indexing's: anyone who can reach it may ask. A big JPEG
        # passes, decoded at reduced scale; the shared decode budget bounds what runs at once.
        data = images.thumbnail_jpeg(Path(path), size, max_pixels=self.max_pixels)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return data
