"""Shared fixtures: a tiny registered backbone, photo folders, a temp index folder, and the expensive
things several modules read, built once a session. Helpers live in helpers.py.

Session fixtures are shared read-only: a test that must change one builds its own (or, as
test_server's metadata test, removes what it added before it ends).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

import tiny_backbone  # noqa: E402,F401  (registers "tiny")
from helpers import PAGE_TAUGHT, TINY, make_image, run  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_index_home(tmp_path_factory, monkeypatch):
    """Never touch the user's real default index."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    monkeypatch.delenv("VECSEARCH_INDEX", raising=False)


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
def indexed_photos(photos, index_dir):
    """`photos` indexed by the CLI on the tiny backbone: (photos, index_dir). Tests may change both."""
    run("index", photos, "--index", index_dir, *TINY, "--quiet")
    return photos, index_dir


@pytest.fixture
def taught(tmp_path, index_dir):
    """Two classes of very different name lengths (8 images each) and 4 unlabelled images."""
    classes = tmp_path / "classes"
    for name, base in (("a", 0), ("a_much_longer_class_name", 50)):
        for i in range(8):
            make_image(classes / name / f"{name}{i}.png", seed=base + i)
    unlabelled = tmp_path / "new"
    for i in range(4):
        make_image(unlabelled / f"new{i}.png", seed=200 + i)
    run("teach", classes, "--index", index_dir, *TINY, "--quiet")
    run("index", unlabelled, "--index", index_dir, "--quiet")
    return index_dir, unlabelled


@pytest.fixture
def tiny_index(index_dir):
    """Open an index on the tiny backbone with a seeded random init."""
    from vecsearch import open_index

    ix = open_index(index_dir, backbone="tiny", weights=None, seed=7)
    yield ix
    ix.close()


@pytest.fixture
def model_meta(tmp_path):
    """The tiny model's metadata, as an export of a real (one-image) index records it."""
    import json

    import numpy as np

    from vecsearch import open_index

    make_image(tmp_path / "one" / "a.png", seed=1)
    with open_index(tmp_path / "seed-index", backbone="tiny", weights=None, seed=7) as ix:
        ix.add([tmp_path / "one"])
        ix.export(tmp_path / "seed.npz")
    with np.load(tmp_path / "seed.npz") as z:
        return json.loads(str(z["meta"]))


# -- built once a session, shared read-only ---------------------------------------------------
@pytest.fixture(scope="session")
def served_index(tmp_path_factory):
    """(root, ix): 12 photos (a/, b/) plus one corrupt file, indexed with the tiny backbone, and 3
    query images in queries/ that are never indexed. test_server's endpoints are checked on it."""
    from vecsearch import open_index

    root = tmp_path_factory.mktemp("served")
    for i in range(12):
        make_image(root / "photos" / ("a" if i < 6 else "b") / f"img{i:02d}.jpg", seed=i)
    (root / "photos" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for i in range(3):  # never indexed: query images
        make_image(root / "queries" / f"q{i}.png", seed=100 + i, size=(50, 70))
    ix = open_index(root / "index", backbone="tiny", weights=None, seed=7)
    ix.add([root / "photos"])
    yield root, ix
    ix.close()


@pytest.fixture(scope="session")
def labelled_served_index(tmp_path_factory):
    """(root, ix): 12 JPEGs in a/ and b/, a PNG in c/, a corrupt file; 6 taught labels (PAGE_TAUGHT)
    and a 1-NN classifier's predictions ("nn1"). What the page shows, and what the API fuzzing drives."""
    from vecsearch import open_index

    root = tmp_path_factory.mktemp("page")
    photos = root / "photos"
    for i in range(12):
        make_image(photos / ("a" if i < 6 else "b") / f"img{i:02d}.jpg", seed=i)
    make_image(photos / "c" / "plain.png", seed=50, size=(40, 30))
    (photos / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "labels.csv").write_text("".join(f"photos/{p},{label}\n" for p, label in PAGE_TAUGHT.items()))
    ix = open_index(root / "index", backbone="tiny", weights=None, seed=7)
    ix.add([photos])
    ix.teach(root / "labels.csv")
    ix.train_classifier("knn", k=1, name="nn1")
    yield root, ix
    ix.close()


@pytest.fixture(scope="session")
def resnet50_top_weights(tmp_path_factory) -> Path:
    """A with-top ResNet50 weights file (seeded random init, seed 3), written once a session: the
    ImageNet labels and the explanations are checked against Keras's own model on it. Each module
    builds that model itself: the Grad-CAM example changes its model's last activation."""
    from vecsearch.backbones import import_keras

    keras = import_keras()
    path = tmp_path_factory.mktemp("resnet50") / "full.weights.h5"
    keras.utils.set_random_seed(3)
    keras.applications.ResNet50(weights=None, include_top=True).save_weights(path)
    return path
