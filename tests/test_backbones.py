"""The backbone registry, the three ways to get weights, and fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from vecsearch import UnknownBackboneError, WeightsSpec, WeightsUnavailableError, load_backbone
from vecsearch.backbones import REGISTRY, get_spec, import_keras


def test_registry_has_the_documented_backbones():
    for name, size, dim in [
        ("resnet50", 224, 2048),
        ("xception", 299, 2048),
        ("inception_v3", 299, 2048),
        ("vgg16", 224, 512),
        ("mobilenet", 224, 1024),
    ]:
        spec = REGISTRY[name]
        assert spec.input_size == (size, size) and spec.dim == dim


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UnknownBackboneError, match="resnet50"):
        get_spec("resnet51")


def test_weights_spec_parsing(tmp_path):
    assert WeightsSpec.parse("imagenet").kind == "imagenet"
    assert WeightsSpec.parse(None, seed=5) == WeightsSpec("random", seed=5)
    assert WeightsSpec.parse("none").seed is not None
    f = tmp_path / "w.weights.h5"
    f.write_bytes(b"x")
    assert WeightsSpec.parse(str(f)) == WeightsSpec("file", path=str(f.resolve()))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        WeightsSpec.parse(str(tmp_path / "missing.h5"))


def test_seeded_random_init_is_reproducible_and_seed_sensitive():
    a = load_backbone("tiny", WeightsSpec("random", seed=1))
    b = load_backbone("tiny", WeightsSpec("random", seed=1))
    c = load_backbone("tiny", WeightsSpec("random", seed=2))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(a.model.predict_on_batch(x), b.model.predict_on_batch(x))


def test_resnet50_seeded_init_agrees_between_builds():
    a = load_backbone("resnet50", None)
    b = load_backbone("resnet50", None)
    assert a.fingerprint == b.fingerprint and a.dim == 2048


def test_weights_file_round_trip_and_with_top_file(tmp_path):
    keras = import_keras()
    bb = load_backbone("tiny", WeightsSpec("random", seed=3))
    notop = tmp_path / "tiny_notop.weights.h5"
    bb.model.save_weights(str(notop))
    assert load_backbone("tiny", str(notop)).fingerprint == bb.fingerprint

    # A with-top file: the pooled part of the full model is what we embed with.
    keras.utils.set_random_seed(9)
    full = REGISTRY["tiny"].build(None, True)
    withtop = tmp_path / "tiny_full.weights.h5"
    full.save_weights(str(withtop))
    loaded = load_backbone("tiny", str(withtop))
    x = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3)).astype("float32")
    pooled = keras.Model(full.inputs, full.get_layer("avg_pool").output)
    np.testing.assert_allclose(loaded.model.predict_on_batch(x), pooled.predict_on_batch(x), rtol=1e-5, atol=1e-6)


def test_garbage_weights_file_is_a_clear_error(tmp_path):
    f = tmp_path / "junk.weights.h5"
    f.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsUnavailableError, match="Could not load weights file"):
        load_backbone("tiny", str(f))


def test_offline_imagenet_says_how_to_supply_a_file(monkeypatch, capsys):
    """No network here: the download fails, and the message says what to do."""
    spec = REGISTRY["resnet50"]

    def offline_build(weights, include_top):
        print("Downloading data from https://example.invalid/resnet50.h5")  # as Keras's get_file does
        raise Exception("URL fetch failure on https://example.invalid/resnet50.h5: None -- [Errno -2] Name or service not known")

    monkeypatch.setitem(REGISTRY, "resnet50", type(spec)(**{**spec.__dict__, "build": offline_build}))
    with pytest.raises(WeightsUnavailableError) as e:
        load_backbone("resnet50", "imagenet")
    msg = str(e.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and e.value.option == "weights"
    from vecsearch.cli._common import cli_message

    assert "--weights FILE" in cli_message(e.value)  # the CLI adds its spelling of the fix
    captured = capsys.readouterr()
    assert captured.out == "" and "Downloading" in captured.err  # stdout stays clean for --json


def test_every_keras_application_is_a_backbone_and_listed():
    """Each image model class of keras.applications has a row, with its own module's preprocess_input."""
    from helpers import run_json

    from vecsearch.backbones import KERAS_APPLICATIONS

    keras = import_keras()
    classes = {n for n in dir(keras.applications) if n[0].isupper()}
    old = {"ResNet50", "Xception", "InceptionV3", "VGG16", "MobileNet"}
    assert {row[2] for row in KERAS_APPLICATIONS} == classes - old
    for name, module, _cls, side, dim, weights_file in KERAS_APPLICATIONS:
        spec = REGISTRY[name]
        assert spec.input_size == (side, side) and spec.dim == dim and weights_file.endswith(".h5")
        assert callable(getattr(keras.applications, module).preprocess_input)
    listed = {r["name"]: r for r in run_json("backbones", "--json")}
    assert set(REGISTRY) <= set(listed)
    assert listed["convnext-tiny"] == {
        "name": "convnext-tiny",
        "input": "224x224",
        "dim": 768,
        "imagenet_top": True,
        "last_conv_layer": None,
        "text": False,
        "source": "keras.applications",
    }
    assert listed["resnet50"]["last_conv_layer"] == "conv5_block3_out"
    # ConvNeXt normalises its vector after the pool: no map adds up to it, so no explanations (said, not faked).
    assert listed["convnext-tiny"]["last_conv_layer"] is None and listed["efficientnetv2-b0"]["last_conv_layer"]
