"""Mixed precision: bfloat16 on this CPU against float32, stored as float32, and when two precisions may share an index.

The reference side is Keras itself: the same architecture built by Keras under the
float32 policy with the same seeded weights, fed by the tutorials' recipe (helpers.keras_recipe).

Measured before choosing the threshold (seeded random init, 8 smooth images): bfloat16 vs
float32 cosine >= 0.99999 for tiny, ResNet50 and MobileNet. That alone says little for
ResNet50 and MobileNet: their random-init vectors are nearly collinear (cosine 0.991-0.999
between *different* images), so the ResNet50 test also checks that each bfloat16 vector is
nearest to its own image's float32 vector, i.e. the precision error is far smaller than
what tells images apart. The tiny backbone's vectors do spread (0.77-0.97 between images).
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from helpers import keras_recipe, make_image, run, run_json, unit

from vecsearch import open_index
from vecsearch.backbones import BackboneSpec, get_spec, import_keras, load_backbone, register
from vecsearch.errors import IndexMismatchError, WeightsUnavailableError
from vecsearch.extract import Extractor


def _fragile_build(weights, include_top):
    """A tiny net that adds 8 then takes it away: nearly exact in float32, ruined in bfloat16
    (8-bit mantissa: numbers near 8 are multiples of 1/16). A real model mixed precision can't run."""
    keras = import_keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Rescaling(1.0, offset=8.0, name="up")(x)
    x = keras.layers.Activation("relu", name="keep")(x)  # so TensorFlow's graph optimiser can't cancel the two offsets
    out = keras.layers.Rescaling(1.0, offset=-8.0, name="down")(x)
    return keras.Model(inputs, out, name="fragile")


register(BackboneSpec("fragile", (32, 32), 16, _fragile_build, lambda x: x / 127.5 - 1.0, has_imagenet=False))


def _cos(a, b):
    return np.sum(unit(a) * unit(b), axis=1)


@pytest.fixture
def pics(tmp_path):
    root = tmp_path / "pics"
    for i in range(8):
        make_image(root / f"p{i}.jpg", seed=300 + i, size=(80, 60))
    return root


def test_mixed_computes_in_bfloat16_on_cpu_and_keeps_the_weights():
    keras = import_keras()
    f32 = load_backbone("tiny", None, precision="float32")
    mixed = load_backbone("tiny", None, precision="mixed")
    assert mixed.precision == "mixed" and f32.precision == "float32"
    assert mixed.model.get_layer("conv1").compute_dtype == "bfloat16"  # no GPU on the test machines
    assert mixed.model.get_layer("conv1").variable_dtype == "float32"
    assert f32.model.get_layer("conv1").compute_dtype == "float32"
    assert mixed.fingerprint == f32.fingerprint  # same seeded weights: precision is recorded apart
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever is built next


def test_the_global_policy_is_restored_when_a_build_fails(tmp_path):
    keras = import_keras()
    bad = tmp_path / "not_weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(WeightsUnavailableError):
        load_backbone("tiny", str(bad), precision="mixed")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_unknown_precision_is_refused():
    with pytest.raises(Exception, match="float32, mixed"):
        load_backbone("tiny", None, precision="float16")


def test_tiny_bfloat16_vectors_agree_with_keras_float32(pics):
    """Ours in mixed precision against Keras's own float32 model and recipe: cosine >= 0.999."""
    paths = sorted(pics.glob("*.jpg"))
    ex = Extractor(load_backbone("tiny", "none", precision="mixed"))
    got = {e.path: e for e in ex.embed_files(paths)}
    ours = np.stack([got[p].vector for p in paths])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    keras = import_keras()
    spec = get_spec("tiny")
    keras.utils.set_random_seed(1234)  # the default seed of --weights none
    reference = keras_recipe(spec.build(None, False), paths, (32, 32), spec.preprocess)
    cos = _cos(ours, reference)
    assert cos.min() >= 0.999, cos
    # ...and the agreement is far tighter than what tells two images apart.
    between = reference @ reference.T - 2 * np.eye(len(paths))
    assert between.max() < 0.999


@pytest.mark.slow
def test_resnet50_bfloat16_agrees_with_float32_and_tells_images_apart():
    rng = np.random.default_rng(0)
    from PIL import Image

    pixels = np.stack(
        [
            np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((224, 224), Image.BICUBIC))
            for _ in range(6)
        ]
    )
    f32 = Extractor(load_backbone("resnet50", None, precision="float32")).embed_pixels(pixels)
    mixed = Extractor(load_backbone("resnet50", None, precision="mixed")).embed_pixels(pixels)
    assert mixed.dtype == np.float32
    cos = _cos(mixed, f32)
    assert cos.min() >= 0.999, cos
    nearest = np.argmax(unit(mixed) @ unit(f32).T, axis=1)
    assert list(nearest) == list(range(len(pixels)))


def test_a_mixed_index_records_it_stores_float32_and_queries_in_mixed(pics, tmp_path):
    ix_dir = tmp_path / "ix"
    out = run_json("index", pics, "--index", ix_dir, "--backbone", "tiny", "--weights", "none", "--precision", "mixed")
    assert out["indexed"] == 8 and "precision_check" not in out
    with sqlite3.connect(ix_dir / "index.db") as c:
        assert c.execute("select precision from index_info").fetchone() == ("mixed",)
    with open_index(ix_dir) as ix:
        assert ix.stats()["precision"] == "mixed"
        ids, mat, _ = ix.store.vectors()
        assert mat.dtype == np.float32 and len(ids) == 8
        np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, atol=1e-6)
        assert ix.backbone.precision == "mixed"  # a query of a new image embeds as the index does
    new = make_image(tmp_path / "new.jpg", seed=999, size=(80, 60))
    hits = run_json("query", new, "--index", ix_dir, "-k", "3")
    assert len(hits) == 3


def test_another_precision_that_agrees_is_accepted(pics, tmp_path):
    ix_dir = tmp_path / "ix"
    run("index", pics, "--index", ix_dir, "--backbone", "tiny", "--weights", "none", "--quiet")
    make_image(pics / "later.jpg", seed=77, size=(80, 60))
    result = run("index", pics, "--index", ix_dir, "--precision", "mixed", "--quiet")
    assert "mixed precision accepted on this float32 index" in result.stdout
    out = run_json("index", pics, "--index", ix_dir, "--precision", "mixed")  # nothing new: no model, no check
    assert "precision_check" not in out
    with open_index(ix_dir, precision="mixed") as ix:
        check = ix.check_precision(ix.backbone)
        assert check.images == 8 and check.min_cosine >= 0.999
        assert ix.stats()["precision"] == "float32"  # the index keeps what it records
        assert len(ix) == 9


def test_another_precision_that_disagrees_is_refused(pics, tmp_path):
    ix_dir = tmp_path / "ix"
    run("index", pics, "--index", ix_dir, "--backbone", "fragile", "--weights", "none", "--quiet")
    make_image(pics / "later.jpg", seed=77, size=(80, 60))
    result = run("index", pics, "--index", ix_dir, "--precision", "mixed", ok=False)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "agree with the stored vectors only to cosine" in result.output
    assert "--precision float32" in result.output
    with open_index(ix_dir) as ix:
        assert len(ix) == 8  # nothing of the other precision got in
    with pytest.raises(IndexMismatchError):
        with open_index(ix_dir, model=load_backbone("fragile", None, precision="mixed")):
            pass


def test_an_index_from_before_precision_was_recorded_is_float32(tiny_index, pics):
    tiny_index.add([pics])
    with sqlite3.connect(tiny_index.directory / "index.db") as c:
        c.execute("update index_info set precision = NULL")
    with open_index(tiny_index.directory) as ix:
        assert ix.precision == "float32" and ix.stats()["precision"] == "float32"


def test_default_batch_size_follows_the_device(monkeypatch):
    from vecsearch import config

    monkeypatch.delenv("VECSEARCH_BATCH_SIZE", raising=False)
    monkeypatch.setattr(config, "gpu_present", lambda: False)
    assert config.default_batch_size() == config.default_batch_size("mixed") == 32
    monkeypatch.setattr(config, "gpu_present", lambda: True)
    assert config.default_batch_size() == 128 and config.default_batch_size("mixed") == 256
    monkeypatch.setenv("VECSEARCH_BATCH_SIZE", "7")
    assert config.default_batch_size("mixed") == 7


def test_cuda_visible_devices_hides_a_gpu(monkeypatch):
    from vecsearch import config

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert config.gpu_present() is False


def test_the_ray_recipe_builds_its_actors_models_in_its_precision():
    from vecsearch.ray_engine import ModelRecipe

    recipe = ModelRecipe.for_model("tiny", None, precision="mixed")
    assert recipe.precision == "mixed"
    bb = recipe.build()  # what each Ray actor runs
    assert bb.precision == "mixed" and bb.model.get_layer("conv2").compute_dtype == "bfloat16"


def test_embed_shards_record_their_precision_and_import_checks_it(pics, tmp_path):
    pytest.importorskip("pyarrow")
    shards = tmp_path / "shards"
    run("embed", pics, "--out", shards, "--backbone", "tiny", "--weights", "none", "--precision", "mixed", "--quiet")
    fresh = tmp_path / "fresh"
    run("import", shards, "--index", fresh)
    with open_index(fresh) as ix:
        assert ix.stats()["precision"] == "mixed" and len(ix) == 8
    # Into a float32 index of the same model: its stored images are embedded in bfloat16 and compared first.
    other = tmp_path / "other"
    for i in range(3):
        make_image(other / f"o{i}.jpg", seed=500 + i, size=(80, 60))
    f32 = tmp_path / "f32"
    run("index", other, "--index", f32, "--backbone", "tiny", "--weights", "none", "--quiet")
    run("import", shards, "--index", f32)
    with open_index(f32) as ix:
        assert ix.stats()["precision"] == "float32" and len(ix) == 11


def test_import_of_another_precision_that_disagrees_is_refused(pics, tmp_path):
    pytest.importorskip("pyarrow")
    shards = tmp_path / "shards"
    run("embed", pics, "--out", shards, "--backbone", "fragile", "--weights", "none", "--precision", "mixed", "--quiet")
    other = tmp_path / "other"
    for i in range(3):
        make_image(other / f"o{i}.jpg", seed=500 + i, size=(80, 60))
    f32 = tmp_path / "f32"
    run("index", other, "--index", f32, "--backbone", "fragile", "--weights", "none", "--quiet")
    result = run("import", shards, "--index", f32, ok=False)
    assert result.exit_code != 0 and "agree with the stored vectors only to cosine" in result.output
    with open_index(f32) as ix:
        assert len(ix) == 3


def test_explanations_work_on_a_mixed_backbone():
    """The feature-map check (its mean is the pooled vector) allows bfloat16's rounding, and the maps agree."""
    from vecsearch.explain import FeatureMaps

    rng = np.random.default_rng(3)
    from PIL import Image

    pixels = np.stack(
        [
            np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC))
            for _ in range(4)
        ]
    )
    fmap, pooled = FeatureMaps(load_backbone("tiny", None, precision="mixed"))(pixels)
    fmap32, pooled32 = FeatureMaps(load_backbone("tiny", None))(pixels)
    assert fmap.dtype == np.float32
    assert _cos(pooled, pooled32).min() >= 0.999
    assert _cos(fmap.reshape(4, -1), fmap32.reshape(4, -1)).min() >= 0.999


def test_an_unknown_precision_on_the_command_line_is_a_message(pics, tmp_path):
    result = run(
        "index", pics, "--index", tmp_path / "ix", "--backbone", "tiny", "--weights", "none", "--precision", "half", ok=False
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "Unknown precision 'half'; choose one of: float32, mixed." in result.output
    assert not (tmp_path / "ix" / "index.db").exists()
