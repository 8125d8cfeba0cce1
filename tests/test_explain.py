"""Explanations: CAM maps that sum to the score, against Grad-CAM done the Keras example's way.

References are independent of `vecsearch.explain`: the Keras Grad-CAM example's code
(a two-output model and `tf.GradientTape`) on a with-top ResNet50 the test writes, the
full model's own pooled features and top weights, sklearn's `decision_function`, and
images whose answer is known (a textured patch on two plain backgrounds; colour squares
seen through a backbone whose features are the colours themselves).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from digits import write_digits
from helpers import keras_recipe, make_image, run, run_json
from PIL import Image

from vecsearch import open_index
from vecsearch.backbones import REGISTRY, BackboneSpec, get_spec, import_keras, register
from vecsearch.errors import VecsearchError
from vecsearch.explain import FeatureMaps, gradient, head_logit_function, jet, linear_weights, normalised
from vecsearch.finetune import HeadParams

BUILT_IN = ("resnet50", "xception", "inception_v3", "vgg16", "mobilenet")
PATCH = 64  # side of the textured patch in a 224 x 224 scene


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _backend() -> str:
    return import_keras().backend.backend()


def _patch_scene(path: Path, background, xy, size: int = 224) -> Path:
    """A plain background with the same textured patch (random 8x8 colour blocks) at `xy`."""
    rng = np.random.default_rng(0)
    patch = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((PATCH, PATCH), Image.NEAREST))
    img = np.zeros((size, size, 3), np.uint8) + np.asarray(background, np.uint8)
    img[xy[1] : xy[1] + PATCH, xy[0] : xy[0] + PATCH] = patch
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _cells(xy, n: int, size: int = 224, side: int = PATCH) -> set[tuple[int, int]]:
    """The (row, column) cells of an n x n map that the patch at `xy` touches."""
    x, y = xy
    return {
        (i, j)
        for i in range(y * n // size, (y + side - 1) * n // size + 1)
        for j in range(x * n // size, (x + side - 1) * n // size + 1)
    }


def _peak(m) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(m), m.shape))


# -- the registry ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILT_IN)
def test_registry_names_the_layer_the_global_pool_reads(name):
    keras = import_keras()
    spec = get_spec(name)
    model = spec.build(None, False)
    pool = next(layer for layer in model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D))
    assert model.get_layer(spec.last_conv_layer).output is pool.input


# -- ImageNet classes, against the Keras Grad-CAM example ------------------------------------
# Its tests are all marked slow: a ResNet50 index takes 10-25 s to build here, and an unmarked test
# would pay for it in the fast loop (`-m "not slow"`).
@pytest.fixture(scope="module")
def world(tmp_path_factory, resnet50_top_weights):
    """A ResNet50 index built from the with-top weights file conftest writes once, and Keras's own with-top model."""
    keras = import_keras()
    d = tmp_path_factory.mktemp("explain")
    a = _patch_scene(d / "photos" / "a.png", (70, 110, 170), (16, 16))
    b = _patch_scene(d / "photos" / "b.png", (230, 210, 160), (140, 130))
    photo = make_image(d / "photos" / "photo.png", seed=11, size=(120, 80))
    ix = open_index(d / "index", backbone="resnet50", weights=str(resnet50_top_weights))
    ix.add([d / "photos"])
    reference = keras.applications.ResNet50(weights=str(resnet50_top_weights), include_top=True)
    yield SimpleNamespace(dir=d, ix=ix, a=a, b=b, photo=photo, paths=[a, b, photo], reference=reference)
    ix.close()


def _keras_example_grad_cam(model, path: Path, conv_layer: str):
    """The Keras Grad-CAM example (keras.io/examples/vision/grad_cam), verbatim but for bilinear
    resizing (indexing's): (the pre-ReLU map, the example's ReLU-and-scaled heatmap, the class)."""
    import tensorflow as tf

    keras = import_keras()
    img = keras.utils.img_to_array(keras.utils.load_img(str(path), target_size=(224, 224), interpolation="bilinear"))
    img_array = keras.applications.resnet50.preprocess_input(np.expand_dims(img, axis=0))
    model.layers[-1].activation = None  # the example removes the last layer's softmax
    grad_model = keras.models.Model(model.inputs, [model.get_layer(conv_layer).output, model.output])
    with tf.GradientTape() as tape, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: a bare array for a list-input model, as the example passes
        last_conv_layer_output, preds = grad_model(img_array)
        pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, last_conv_layer_output)
    pooled_grads = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.squeeze(last_conv_layer_output[0] @ pooled_grads[..., tf.newaxis])
    shown = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy(), shown.numpy(), int(pred_index)


@pytest.mark.slow
@pytest.mark.skipif(_backend() != "tensorflow", reason="the Keras example uses tf.GradientTape")
def test_top1_imagenet_map_equals_the_keras_grad_cam_example(world):
    from vecsearch.labels import imagenet_classes

    for path in world.paths:
        ours = world.ix.explain(path)
        raw, shown, c = _keras_example_grad_cam(world.reference, path, "conv5_block3_out")
        assert ours.wnid == imagenet_classes()[c].wnid  # the same top-1 class
        assert ours.map.shape == raw.shape == (7, 7)
        assert _cosine(ours.map, raw) >= 0.99
        assert _cosine(ours.heat(), shown) >= 0.99


@pytest.mark.slow
def test_linear_maps_sum_to_the_scores_feature_part(world):
    keras = import_keras()
    pooled_model = keras.Model(world.reference.inputs, world.reference.get_layer("avg_pool").output)
    W = np.asarray(world.reference.layers[-1].kernel.numpy(), np.float64)
    b = np.asarray(world.reference.layers[-1].bias.numpy(), np.float64)
    pooled = keras_recipe(pooled_model, world.paths, (224, 224), keras.applications.resnet50.preprocess_input, normalise=False)
    from vecsearch.labels import find_classes

    for path, p in zip(world.paths, pooled, strict=False):
        top1 = world.ix.explain(path)
        other = world.ix.explain(path, imagenet_class="golden retriever")
        for e in (top1, other):
            c = find_classes(e.wnid)[0].index
            expected = p @ W[:, c]
            assert e.map.sum() == pytest.approx(expected, rel=1e-4)
            assert e.feature_score == pytest.approx(e.map.sum(), rel=1e-9)
            assert e.score == pytest.approx(expected + b[c], rel=1e-4, abs=1e-4)
        assert other.label == "golden_retriever" and other.wnid == "n02099601"
        logits = p @ W + b
        assert find_classes(top1.wnid)[0].index == int(np.argmax(logits))
    # The CLI gives the same map as numbers, with its shape.
    d = run_json("explain", world.photo, "--class", "n01440764", "--out", world.dir / "tench.png", "--index", world.ix.directory)
    want = world.ix.explain(world.photo, imagenet_class="tench")
    assert (d["label"], d["wnid"], d["shape"]) == ("tench", "n01440764", [7, 7])
    np.testing.assert_allclose(d["map"], want.map, rtol=1e-6)
    assert d["feature_score"] == pytest.approx(sum(map(sum, d["map"])), rel=1e-9)
    # Similarity: the map sums to the cosine of the two images' vectors, as search computes it.
    va, vb = world.ix.embed([world.a, world.b])
    e = world.ix.explain(world.a, like=world.b)
    assert e.bias == 0 and e.map.sum() == pytest.approx(float(va @ vb), rel=1e-4)
    assert e.score == pytest.approx(float(va @ vb), rel=1e-4)


@pytest.mark.slow
def test_why_similar_peaks_on_the_shared_patch(world):
    """The same textured patch on two plain backgrounds: each image's map against the other peaks on it."""
    for img, other, xy in ((world.a, world.b, (16, 16)), (world.b, world.a, (140, 130))):
        e = world.ix.explain(img, like=other)
        assert _peak(e.map) in _cells(xy, 7), (img.name, np.round(e.map / e.map.max(), 2))
        # and the overlay is reddest over the patch
        over = np.asarray(e.overlay(), np.float64)
        red = over[..., 0] - over[..., 2]
        ry, rx = np.unravel_index(np.argmax(red), red.shape)
        scale = over.shape[0] / 224
        assert xy[0] - 16 <= rx / scale <= xy[0] + PATCH + 16 and xy[1] - 16 <= ry / scale <= xy[1] + PATCH + 16


# -- a backbone whose features are the colours: answers known exactly ------------------------
def _colour_build(weights, include_top):
    keras = import_keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 1, strides=4, use_bias=False, name="colours")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="pool")(x), name="colours")
    model.get_layer("colours").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    return model


@pytest.fixture
def colour_backbone():
    """A plugin backbone registered without naming its last layer: the pool's input is found."""
    spec = register(BackboneSpec("colours", (32, 32), 3, _colour_build, lambda x: x / 255.0, has_imagenet=False))
    yield spec
    REGISTRY.pop("colours", None)


def _squares(path: Path, squares) -> Path:
    img = np.zeros((32, 32, 3), np.uint8)
    for colour, (x, y) in squares:
        img[y : y + 8, x : x + 8] = colour
    Image.fromarray(img).save(path)
    return path


def test_why_similar_follows_what_the_images_share(colour_backbone, tmp_path):
    red, green = (255, 0, 0), (0, 255, 0)
    both = _squares(tmp_path / "both.png", [(red, (0, 0)), (green, (24, 24))])
    only_red = _squares(tmp_path / "red.png", [(red, (16, 8))])
    only_green = _squares(tmp_path / "green.png", [(green, (8, 16))])
    with open_index(tmp_path / "index", backbone="colours", weights=None) as ix:
        ix.add([both, only_red, only_green])
        assert FeatureMaps(ix.backbone).layer == "colours"
        by_red, by_green = ix.explain(both, like=only_red), ix.explain(both, like=only_green)
    assert by_red.map.shape == (8, 8)
    # Only the red square's cells hold the similarity to the red image, only the green one's to the green.
    assert set(zip(*np.nonzero(by_red.map > 1e-9), strict=False)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(zip(*np.nonzero(by_green.map > 1e-9), strict=False)) == {(6, 6), (6, 7), (7, 6), (7, 7)}
    assert by_red.map.sum() == pytest.approx(1 / np.sqrt(2), rel=1e-6)  # cos(red + green, red)


def test_a_wrong_last_layer_is_refused(colour_backbone, tmp_path):
    register(BackboneSpec("colours", (32, 32), 3, _colour_build, lambda x: x / 255.0, has_imagenet=False, last_conv_layer="nope"))
    img = _squares(tmp_path / "x.png", [((255, 0, 0), (0, 0))])
    with open_index(tmp_path / "index", backbone="colours", weights=None) as ix:
        ix.add([img])
        with pytest.raises(VecsearchError, match="no layer 'nope'"):
            ix.explain(img, like=img)


# -- classifiers: the probe (CAM) and the head (Grad-CAM) ------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """36 rendered digits (0, 1, 2) in a tiny-backbone index with a probe, a k-NN and a head."""
    base = tmp_path_factory.mktemp("digits")
    labels = write_digits(base / "digits", per_class=12, classes=range(3))
    ix = open_index(base / "index", backbone="tiny", weights=None, seed=7)
    ix.teach(base / "digits")
    ix.train_classifier("probe")
    ix.train_classifier("knn")
    ix.finetune(params=HeadParams(epochs=10, units=16, batch_size=16, learning_rate=3e-3, seed=0))
    yield SimpleNamespace(ix=ix, paths=sorted(labels), labels=labels, base=base)
    ix.close()


def test_probe_maps_sum_to_its_decision_values(digits):
    row, probe = digits.ix.classifier("probe")
    for path in digits.paths[::7]:
        x = digits.ix.vectors_for([path])
        decision = probe.decision_function(x)[0]
        for label in (None, "0", "2"):
            e = digits.ix.explain(path, classifier="probe", label=label)
            j = list(probe.classes_).index(e.label)
            assert e.method == "cam" and e.classifier == "probe"
            assert e.score == pytest.approx(decision[j], rel=1e-4, abs=1e-5)
            assert e.map.sum() == pytest.approx(e.feature_score, rel=1e-9)
            assert e.probability == pytest.approx(probe.predict_proba(x)[0, j], rel=1e-4)
        assert digits.ix.explain(path, classifier="probe").label == probe.predict(x)[0]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_probes_weights_compose_to_its_decision_function(n_classes):
    from vecsearch.classify import fit_probe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 12))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = np.array([str(i % n_classes) for i in range(30)])
    probe, _, _ = fit_probe(X, y)
    W, b, classes = linear_weights(probe, 12)
    np.testing.assert_allclose(X @ W + b, probe.decision_function(X).reshape(30, -1), rtol=1e-8, atol=1e-10)
    assert list(classes) == list(probe.classes_)


def test_a_knn_cannot_be_explained_by_weights(digits):
    with pytest.raises(VecsearchError, match="k-NN"):
        digits.ix.explain(digits.paths[0], classifier="knn")
    with pytest.raises(VecsearchError, match="no class 'seven'"):
        digits.ix.explain(digits.paths[0], classifier="probe", label="seven")
    with pytest.raises(VecsearchError, match="one thing at a time"):
        digits.ix.explain(digits.paths[0], classifier="probe", like=1)


def test_head_grad_cam_gradient_is_the_logits_derivative(digits):
    """On any backend: the gradient the backend gives matches a finite difference of the head's logit."""
    row, head = digits.ix.classifier("head")
    e = digits.ix.explain(digits.paths[0], classifier="head")
    assert e.method == "grad-cam" and e.bias is None and e.map.shape == (7, 7) and np.isfinite(e.map).all()
    assert e.label == head.predict(digits.ix.vectors_for([digits.paths[0]]))[0]
    fmap, _ = FeatureMaps(digits.ix.backbone)(np.asarray(Image.open(digits.paths[0]).convert("RGB"))[None])
    j = list(head.classes_).index(e.label)
    f = head_logit_function(head.model, j)
    y0, g = gradient(f, fmap)
    assert y0 == pytest.approx(e.score, rel=1e-4, abs=1e-4)
    rng = np.random.default_rng(0)
    for _ in range(3):
        direction = rng.normal(size=fmap.shape).astype(np.float32) * fmap  # relative: fmap's scale, its zeros kept
        eps = 1e-3  # small enough that no ReLU of the head flips (measured: 1e-2 already crosses kinks)
        up, _ = gradient(f, fmap + eps * direction)
        down, _ = gradient(f, fmap - eps * direction)
        assert (up - down) / (2 * eps) == pytest.approx(float((g * direction).sum()), rel=2e-2, abs=1e-3)


@pytest.mark.skipif(_backend() != "tensorflow", reason="the reference uses tf.GradientTape")
def test_head_grad_cam_equals_the_keras_example_through_the_whole_model(digits):
    import tensorflow as tf

    keras = import_keras()
    row, head = digits.ix.classifier("head")
    bb = digits.ix.backbone.model
    logits_head = keras.models.clone_model(head.model)
    logits_head.set_weights(head.model.get_weights())
    logits_head.layers[-1].activation = None  # as the example does
    grad_model = keras.Model(bb.inputs, [bb.get_layer("conv2").output, logits_head(keras.layers.UnitNormalization()(bb.output))])
    for path in digits.paths[::9]:
        e = digits.ix.explain(path, classifier="head", label="1")
        x = get_spec("tiny").preprocess(
            keras.utils.img_to_array(keras.utils.load_img(str(path), target_size=(32, 32), interpolation="bilinear"))[None]
        )
        with tf.GradientTape() as tape, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # as above: the bare array the example passes
            conv_out, preds = grad_model(x)
            channel = preds[:, list(head.classes_).index("1")]
        grads = tape.gradient(channel, conv_out)
        heat = tf.squeeze(conv_out[0] @ tf.reduce_mean(grads, axis=(0, 1, 2))[..., tf.newaxis]).numpy()
        assert e.score == pytest.approx(float(channel[0]), rel=1e-3, abs=1e-4)
        assert _cosine(e.map, heat) >= 0.99


# -- drawing, the CLI --------------------------------------------------------------------------
def test_colour_map_and_scaling():
    np.testing.assert_allclose(jet(np.array([0.0, 0.5, 1.0])), [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])
    np.testing.assert_allclose(normalised(np.array([[-1.0, 0.5], [2.0, 1.0]])), [[0, 0.25], [1, 0.5]])
    assert not normalised(np.array([[-1.0, -2.0]])).any()


def test_explain_cli_writes_an_overlay_at_the_images_aspect_ratio(tiny_index, photos, tmp_path):
    tiny_index.add([photos])
    img = make_image(tmp_path / "wide.png", seed=77, size=(96, 64))
    other = photos / "a" / "img01.jpg"
    other_id = tiny_index.search(other, 1, include_self=True)[0].id
    out = tmp_path / "heat.png"
    d = run_json("explain", img, "--id", other_id, "--out", out, "--index", tiny_index.directory)
    assert d["target"] == "similar" and d["method"] == "cam" and d["shape"] == [7, 7]
    assert np.asarray(d["map"]).shape == (7, 7) and d["out"] == str(out)
    cos = float(tiny_index.embed([img])[0] @ tiny_index.vector(other_id))
    assert sum(map(sum, d["map"])) == pytest.approx(cos, rel=1e-4) and d["score"] == pytest.approx(cos, rel=1e-4)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (512, 341)  # 96 x 64, longest side 512
    like = run_json("explain", img, "--like", other, "--out", tmp_path / "h2.png", "--index", tiny_index.directory)
    assert like["map"] == d["map"]
    text = run("explain", img, "--like", other, "--out", tmp_path / "h3.png", "--side", "100", "--index", tiny_index.directory)
    assert "similarity" in text.stdout and "h3.png" in text.stdout
    assert Image.open(tmp_path / "h3.png").size == (100, 67)
    bad = run("explain", img, "--like", other, "--id", other_id, "--index", tiny_index.directory, ok=False)
    assert bad.exit_code == 1 and "not both" in bad.output
    no_top = run("explain", img, "--index", tiny_index.directory, ok=False)  # tiny has no ImageNet top
    assert no_top.exit_code == 1 and "Error" in no_top.output and "Traceback" not in no_top.output


def test_query_explain_writes_one_pair_per_result(tiny_index, photos, tmp_path):
    tiny_index.add([photos])
    query = make_image(tmp_path / "q.png", seed=5, size=(60, 60))
    hits = run_json("query", query, "--k", 3, "--explain", tmp_path / "why", "--index", tiny_index.directory)
    assert len(hits) == 3
    for h in hits:
        path = Path(h["explain"])
        assert path.parent == tmp_path / "why" and path.name.startswith(f"{h['rank']:02d}-")
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 2 * 500  # the query's map beside the result's
    pairs = tiny_index.explain_hits(query, tiny_index.search(query, 3))
    for h, (q, r) in zip(hits, pairs, strict=False):
        assert q.map.sum() == pytest.approx(h["score"], rel=1e-4) and r.map.sum() == pytest.approx(h["score"], rel=1e-4)
    text = run("query", query, "--k", 2, "--explain", tmp_path / "why2", "--index", tiny_index.directory)
    assert "why similar: 2 heatmaps" in text.stdout and len(list((tmp_path / "why2").glob("*.png"))) == 2


@pytest.mark.slow
def test_explanations_find_the_last_pool_of_table_backbones_and_refuse_convnext():
    """EfficientNet's squeeze-and-excite blocks pool too: the map is the one the last pool reads (its
    mean is the vector: FeatureMaps checks it). ConvNeXt normalises after the pool: a clear refusal."""
    from vecsearch.backbones import WeightsSpec, load_backbone
    from vecsearch.explain import FeatureMaps

    pixels = np.random.default_rng(3).integers(0, 256, (2, 224, 224, 3)).astype(np.uint8)
    for name, layer in (("efficientnetv2-b0", "top_activation"), ("mobilenet-v3-small", None)):
        maps = FeatureMaps(load_backbone(name, WeightsSpec.parse(None, 2)))
        fmap, pooled = maps(pixels)
        assert fmap.shape == (2, 7, 7, get_spec(name).dim) and pooled.shape == (2, get_spec(name).dim)
        assert layer is None or maps.layer == layer
    with pytest.raises(VecsearchError, match="Explanations are not available for backbone convnext-tiny"):
        FeatureMaps(load_backbone("convnext-tiny", WeightsSpec.parse(None, 2)))
