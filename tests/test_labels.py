"""ImageNet top-k labels against Keras itself: the full with-top model and decode_predictions.

The reference side is the tutorial recipe on a model Keras builds from the with-top
weights file (load_img bilinear, preprocess_input, predict, decode_predictions), so
nothing of ours is on it. Keras's decode_predictions reads the class index from its own
cache folder and checks its md5; we point that folder at our bundled file, so the test
also proves the bundled file is Keras's. Listings by class (`search-labels`, `query --imagenet`)
are checked on labels written straight into the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import GOLDFISH, TENCH, keras_recipe, make_image, run, run_json, store_imagenet_labels

from vecsearch import labels, open_index
from vecsearch.backbones import WeightsSpec, get_spec, import_keras
from vecsearch.errors import UnknownClassError, VecsearchError, WeightsUnavailableError

TOP = 5


# Its tests are all marked slow: a ResNet50 index takes 10-25 s to build here, and an unmarked test
# would pay for it in the fast loop (`-m "not slow"`).
@pytest.fixture(scope="module")
def world(tmp_path_factory, resnet50_top_weights):
    """A ResNet50 index built from the with-top weights file conftest writes once, labelled, and Keras's own predictions."""
    keras = import_keras()
    d = tmp_path_factory.mktemp("labels")
    photos = d / "photos"
    paths = [make_image(photos / f"img{i}.png", seed=100 + i, size=(80, 60)) for i in range(4)]
    index_dir = d / "index"
    with open_index(index_dir, backbone="resnet50", weights=str(resnet50_top_weights)) as ix:
        summary = ix.add([photos])
        assert summary.indexed == 4
        ix.label(top=TOP)
    reference = keras.applications.ResNet50(weights=str(resnet50_top_weights), include_top=True)
    ref_probs = keras_recipe(reference, paths, (224, 224), keras.applications.resnet50.preprocess_input, normalise=False)
    return SimpleNamespace(
        dir=d,
        photos=photos,
        paths=paths,
        index=index_dir,
        full=resnet50_top_weights,
        reference=reference,
        ref_probs=np.asarray(ref_probs, np.float64),
    )


def _stored(index_dir):
    with open_index(index_dir, create=False) as ix:
        return {Path(item.path): item for item in ix.image_labels()}


@pytest.fixture
def keras_decode(tmp_path, monkeypatch):
    """Keras's decode_predictions, reading the class index from a cache holding our bundled file."""
    keras = import_keras()
    from keras.src.applications import imagenet_utils
    from keras.src.backend import config

    (tmp_path / "keras" / "models").mkdir(parents=True)
    shutil.copy(
        resources.files("vecsearch").joinpath("imagenet_class_index.json"),
        tmp_path / "keras" / "models" / "imagenet_class_index.json",
    )
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras"))
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)
    return keras.applications.resnet50.decode_predictions


@pytest.mark.slow
def test_labels_equal_keras_full_model_and_decode_predictions(world, keras_decode):
    stored = _stored(world.index)
    expected = keras_decode(world.ref_probs, top=TOP)  # a different file would fail Keras's md5 check
    for path, ref in zip(world.paths, expected, strict=False):
        ours = stored[path.resolve()].labels
        assert [lb.rank for lb in ours] == list(range(1, TOP + 1))
        # The top class is clear-cut; lower ranks may be near-ties, so compare by probability.
        assert (ours[0].wnid, ours[0].name) == tuple(ref[0][:2])
        np.testing.assert_allclose([lb.prob for lb in ours], [r[2] for r in ref], atol=1e-4)
        by_wnid = {r[0]: r[1] for r in ref}
        for lb in ours:
            if lb.wnid in by_wnid:
                assert by_wnid[lb.wnid] == lb.name
        assert len(set(by_wnid) & {lb.wnid for lb in ours}) >= TOP - 1


@pytest.mark.slow
def test_probabilities_sum_to_one_over_1000_classes_without_a_second_pass(world, tmp_path, monkeypatch):
    index = tmp_path / "index"
    shutil.copytree(world.index, index)
    (index / labels.TOP_CACHE).unlink()  # rebuild the top from the weights file

    def no_pass(*a, **k):
        raise AssertionError("labels must come from the stored vectors, not a pass over the images")

    monkeypatch.setattr("vecsearch.extract.Extractor.features", no_pass)
    with open_index(index, create=False) as ix:
        ids, probs = ix.imagenet_probabilities()
        assert (index / labels.TOP_CACHE).exists()
        recs = ix.store.images(ids)
        assert probs.shape == (4, 1000) and (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        order = [world.paths.index(Path(recs[int(i)].path)) for i in ids]
        np.testing.assert_allclose(probs, world.ref_probs[order], atol=1e-4)
        assert ix.label(top=1000).labelled == 4  # every class stored: sums to 1 too
        full = ix.store.imagenet_labels()
        for rows in full.values():
            assert sorted(r[1] for r in rows) == list(range(1000))
            assert abs(sum(r[4] for r in rows) - 1.0) < 1e-9


def test_the_bundled_class_index():
    classes = labels.imagenet_classes()
    assert len(classes) == 1000 and [c.index for c in classes] == list(range(1000))
    assert len({c.wnid for c in classes}) == 1000
    assert (classes[0].wnid, classes[0].name) == ("n01440764", "tench")
    assert (classes[999].wnid, classes[999].name) == ("n15075141", "toilet_tissue")
    data = resources.files("vecsearch").joinpath("imagenet_class_index.json").read_bytes()
    assert hashlib.md5(data).hexdigest() == "c2c37ea517e94d9795004a39431a14cb"  # the hash Keras checks
    assert [c.name for c in labels.find_classes("n02099601")] == ["golden_retriever"]
    assert [c.wnid for c in labels.find_classes("Golden Retriever")] == ["n02099601"]
    assert [c.index for c in labels.find_classes("crane")] == [134, 517]  # the bird and the machine
    with pytest.raises(UnknownClassError, match="golden_retriever"):
        labels.find_classes("golden retreiver")


@pytest.mark.slow
def test_query_label_lists_exactly_the_images_whose_topk_holds_it(world):
    stored = _stored(world.index)
    holders: dict[str, set[str]] = {}
    for path, item in stored.items():
        for lb in item.labels:
            holders.setdefault(lb.wnid, set()).add(str(path))
    # Prefer a class some images have and some don't, so the filter is really tested.
    wnid = min(holders, key=lambda w: (len(holders[w]) in (0, len(stored)), w))
    name = next(lb.name for item in stored.values() for lb in item.labels if lb.wnid == wnid)
    for q in (name, wnid, name.upper().replace("_", " ")):
        hits = run_json("query", "--label", q, "--index", world.index)
        assert {h["path"] for h in hits} == holders[wnid], q
        assert [h["prob"] for h in hits] == sorted((h["prob"] for h in hits), reverse=True)
        assert all(h["wnid"] == wnid and h["name"] == name for h in hits)
    assert run_json("search-labels", wnid, "--index", world.index) == run_json("query", "--label", wnid, "--index", world.index)
    assert len(run_json("query", "--label", wnid, "--index", world.index, "-k", 1)) == 1
    absent = next(c for c in labels.imagenet_classes() if c.wnid not in holders)
    assert run_json("query", "--label", absent.wnid, "--index", world.index) == []

    text = run("query", "--label", name, "--index", world.index).stdout
    assert text.splitlines()[0].split() == ["rank", "class_rank", "prob", "path"] and len(text.splitlines()) == 1 + len(
        holders[wnid]
    )
    r = run("query", "--label", "golden retreiver", "--index", world.index, ok=False)
    assert r.exit_code == 1 and "not an ImageNet class" in r.output and "golden_retriever" in r.output
    assert "Traceback" not in r.output
    # With an IMAGE, --label is a class of the user's own (none is taught here).
    r = run("query", world.paths[0], "--label", name, "--index", world.index, ok=False)
    assert r.exit_code == 1 and "taught" in r.output


@pytest.mark.slow
def test_label_command_json_and_text(world, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(world.index, index)
    items = run_json("label", "--index", index, "--top", 3)
    assert len(items) == 4 and {Path(i["path"]) for i in items} == {p.resolve() for p in world.paths}
    for item in items:
        assert set(item) == {"id", "path", "labels"} and isinstance(item["id"], int)
        assert [lb["rank"] for lb in item["labels"]] == [1, 2, 3]
        assert all(set(lb) == {"rank", "wnid", "name", "prob"} for lb in item["labels"])
        assert [lb["prob"] for lb in item["labels"]] == sorted((lb["prob"] for lb in item["labels"]), reverse=True)
    one = run_json("label", world.paths[1], "--index", index, "--top", 3)
    assert [i["path"] for i in one] == [str(world.paths[1].resolve())]
    lines = run("label", world.paths[1], "--index", index, "--quiet").stdout.splitlines()
    assert lines[0] == str(world.paths[1].resolve()) and len(lines) == 1 + TOP
    stored = _stored(index)  # only the image asked for was relabelled
    assert len(stored[world.paths[1].resolve()].labels) == TOP and len(stored[world.paths[0].resolve()].labels) == 3
    rank, wnid, name, prob = lines[1].split()
    assert rank == "1" and labels.find_classes(wnid)[0].name == name and 0 < float(prob) <= 1
    r = run("label", tmp_path / "nope.png", "--index", index, ok=False)
    assert r.exit_code == 1 and "No such file" in r.output
    r = run("label", "--index", tmp_path / "none", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output


@pytest.mark.slow
def test_index_label_labels_new_images(world, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(world.index, index)
    new = make_image(tmp_path / "new" / "fresh.png", seed=999, size=(70, 50))
    s = run_json("index", new.parent, "--index", index, "--label", "--top", 2)
    assert s["indexed"] == 1 and s["labelled"] == 1
    stored = _stored(index)
    assert len(stored[new.resolve()].labels) == 2
    assert all(len(stored[p.resolve()].labels) == TOP for p in world.paths)  # the others kept theirs
    keras = import_keras()
    ref = keras_recipe(world.reference, [new], (224, 224), keras.applications.resnet50.preprocess_input, normalise=False)[0]
    best = np.argsort(-ref)[:2]
    np.testing.assert_allclose([lb.prob for lb in stored[new.resolve()].labels], ref[best], atol=1e-4)
    assert stored[new.resolve()].labels[0].wnid == labels.imagenet_classes()[best[0]].wnid
    assert run_json("index", new.parent, "--index", index, "--label")["labelled"] == 0


@pytest.mark.slow
def test_no_top_weights_file_gets_a_clear_message(world, tmp_path):
    keras = import_keras()
    keras.utils.set_random_seed(4)
    keras.applications.ResNet50(weights=None, include_top=False, pooling="avg").save_weights(tmp_path / "notop.weights.h5")
    make_image(tmp_path / "p" / "one.png", seed=1)
    index = tmp_path / "index"
    run("index", tmp_path / "p", "--index", index, "--backbone", "resnet50", "--weights", tmp_path / "notop.weights.h5", "-q")
    r = run("label", "--index", index, ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output and isinstance(r.exception, SystemExit)
    assert "no-top" in r.output and "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in r.output and "--weights" in r.output
    # A with-top file of other weights is refused: its labels would belong to another model.
    r = run("label", "--index", index, "--weights", world.full, ok=False)
    assert r.exit_code == 1 and "not have the convolutional weights" in r.output
    # The with-top file of the same weights (as the official pair of files) works.
    keras.utils.set_random_seed(4)
    keras.applications.ResNet50(weights=None, include_top=True).save_weights(tmp_path / "same.weights.h5")
    items = run_json("label", "--index", index, "--weights", tmp_path / "same.weights.h5", "--top", 2)
    assert len(items) == 1 and len(items[0]["labels"]) == 2
    assert len(run_json("label", "--index", index, "--top", 2)) == 1  # now from the cached top


def test_only_a_linear_top_over_the_pool_is_accepted():
    """Dense (ResNet50) and 1x1-conv (MobileNet) tops give the model's own probabilities; others are refused."""
    keras = import_keras()
    L = keras.layers
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 3, 8))
    feats = np.random.default_rng(0).normal(size=(5, 3, 3, 8)).astype(np.float32)
    pooled = feats.mean(axis=(1, 2))
    dense = keras.Model(inp, L.Dense(1000, activation="softmax")(L.GlobalAveragePooling2D()(inp)))
    x = L.Conv2D(1000, 1)(L.Dropout(0.5)(L.GlobalAveragePooling2D(keepdims=True)(inp)))
    conv = keras.Model(inp, L.Activation("softmax")(L.Reshape((1000,))(x)))
    for model in (dense, conv):
        W, b = labels.top_of(model, 8)
        top = labels.ImagenetTop(W, b, "")
        np.testing.assert_allclose(top.probabilities(pooled), model.predict(feats, verbose=0), atol=1e-6)
    refused = [
        keras.Model(inp, L.Dense(1000, activation="softmax")(L.Dense(16)(L.GlobalAveragePooling2D()(inp)))),  # VGG-like
        keras.Model(inp, L.Dense(1000, activation="softmax")(L.Flatten()(inp))),  # no pool
        keras.Model(inp, L.Dense(10, activation="softmax")(L.GlobalAveragePooling2D()(inp))),  # not ImageNet
    ]
    for model in refused:
        with pytest.raises(VecsearchError):
            labels.top_of(model, 8)


def test_offline_imagenet_top_names_the_file_to_download():
    spec = get_spec("resnet50")

    def offline(weights, include_top):
        raise Exception("URL fetch failure: Name or service not known")

    with pytest.raises(WeightsUnavailableError, match="resnet50_weights_tf_dim_ordering_tf_kernels.h5"):
        labels._full_model(dataclasses.replace(spec, build=offline), WeightsSpec("imagenet"))


# -- listing by ImageNet class, from stored labels --------------------------------------------
def test_imagenet_listing_ranks_results_and_names_the_class_rank(indexed_photos):
    photos, index_dir = indexed_photos
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))[:3]
    store_imagenet_labels(
        index_dir,
        {
            paths[0]: [(*TENCH, 0.9), (*GOLDFISH, 0.1)],
            paths[1]: [(*GOLDFISH, 0.6), (*TENCH, 0.4)],
            paths[2]: [(*TENCH, 0.7), (*GOLDFISH, 0.3)],
        },
    )
    hits = run_json("search-labels", "tench", "--index", index_dir)
    assert [(h["path"], h["rank"], h["class_rank"]) for h in hits] == [(paths[0], 1, 1), (paths[2], 2, 1), (paths[1], 3, 2)]
    lines = run("search-labels", "tench", "--index", index_dir).stdout.splitlines()
    assert lines[0].split() == ["rank", "class_rank", "prob", "path"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["1", "1"], ["2", "1"], ["3", "2"]]
    # A real class no image has: one line that says so (and that 9 images have no labels), not a bare header.
    r = run("search-labels", "golden_retriever", "--index", index_dir)
    assert r.stdout.strip() == (
        "No labelled image has golden_retriever in its stored ImageNet top-k; only 3 of 12 "
        "indexed images have ImageNet labels: `vecsearch label --missing` labels the other 9."
    )
    assert run_json("search-labels", "golden_retriever", "--index", index_dir) == []


def test_imagenet_listing_says_how_many_images_are_labelled(indexed_photos):
    photos, index_dir = indexed_photos
    paths = sorted(str(p.resolve()) for p in photos.rglob("*.*"))
    store_imagenet_labels(index_dir, {paths[0]: [(*TENCH, 0.9)]})
    r = run("query", "--imagenet", "goldfish", "--index", index_dir)
    assert "only 1 of 12 indexed images have ImageNet labels" in r.stdout and "`vecsearch label --missing`" in r.stdout
    r = run("query", "--imagenet", "tench", "--index", index_dir)
    assert paths[0] in r.stdout and "only 1 of 12" in r.stderr
    assert [h["path"] for h in run_json("search-labels", "tench", "--index", index_dir)] == [paths[0]]
    store_imagenet_labels(index_dir, {p: [(*TENCH, 0.9)] for p in paths})
    r = run("query", "--imagenet", "goldfish", "--index", index_dir)
    assert r.stdout.strip() == "No indexed image has goldfish in its stored ImageNet top-k." and "of 12" not in r.stderr
