"""How often indexing reads a file: new content once (hashed while it is decoded), not once more to plan."""

from __future__ import annotations

import os
import shutil

from helpers import make_image

from vecsearch import files


def test_a_rerun_hashes_only_files_that_may_be_known_content(tiny_index, photos, monkeypatch):
    tiny_index.add([photos])
    known_sizes = {p.stat().st_size for p in photos.rglob("*") if p.is_file()}
    new = [make_image(photos / "new" / f"n{i}.jpg", seed=900 + i, size=(70 + i, 50)) for i in range(3)]
    assert not {p.stat().st_size for p in new} & known_sizes  # new content, and no size says otherwise
    copy = shutil.copy(photos / "a" / "img01.jpg", photos / "copy.jpg")
    touched = photos / "b" / "img07.jpg"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p, **kw: hashed.append(os.fspath(p)) or real(p, **kw))
    summary = tiny_index.add([photos])

    assert sorted(hashed) == sorted([os.fspath(copy), os.fspath(touched)])
    assert (summary.indexed, summary.reused, summary.unchanged) == (3, 1, 12)
    # The copy shares its original's vector; each new file has its own.
    ids = {p: tiny_index.store.image_by_path(str(p)).id for p in (photos / "a" / "img01.jpg", copy)}
    assert (tiny_index.vector(ids[copy]) == tiny_index.vector(ids[photos / "a" / "img01.jpg"])).all()
