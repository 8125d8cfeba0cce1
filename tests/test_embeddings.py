"""Our pipeline's vectors against the plain Keras recipe with the same weights file.

The reference is written the way the tutorials do it (load_img, img_to_array,
preprocess_input, model.predict) on a model Keras builds from the weights file itself,
so nothing of ours is on the reference side. Random-init ResNet50 features are nearly
collinear, so besides the cosine we also compare the vectors after removing their common
direction (centred on the references' mean), where a wrong pipeline shows at once.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras_recipe, make_image
from helpers import unit as _unit

from vecsearch import open_index
from vecsearch.backbones import import_keras


def _reference(keras_module, ctor, weights_file, paths, size):
    """The recipe on a model Keras builds from the weights file itself."""
    model = getattr(keras_module.applications, ctor)(weights=str(weights_file), include_top=False, pooling="avg")
    module = getattr(keras_module.applications, "resnet50" if ctor == "ResNet50" else ctor.lower())
    return keras_recipe(model, paths, size, module.preprocess_input)


def _ours(index, paths):
    vecs = {}
    for p in paths:
        rec = index.store.image_by_path(str(p.resolve()))
        assert rec is not None and rec.status == "ok", rec
        vecs[p] = index.vector(rec.id)
    return np.stack([vecs[p] for p in paths]).astype(np.float64)


def _centred_cos(a, b, mean):
    return np.sum(_unit(a - mean) * _unit(b - mean), axis=1)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    keras = import_keras()
    keras.utils.set_random_seed(42)
    model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg")
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    model.save_weights(str(path))
    return path


# Its tests are all marked slow: a ResNet50 index takes 10-25 s to build here, and an unmarked test
# would pay for it in the fast loop (`-m "not slow"`).
@pytest.fixture(scope="module")
def resnet_case(tmp_path_factory, resnet_file):
    root = tmp_path_factory.mktemp("emb")
    pngs = [make_image(root / f"p{i}.png", seed=100 + i, size=(300 + 40 * i, 200 + 30 * i)) for i in range(4)]
    # 12 MP-ish JPEGs are slow to write; 2000x1500 still makes draft() decode at 1/4 scale.
    jpgs = [make_image(root / f"j{i}.jpg", seed=200 + i, size=(2000, 1500)) for i in range(3)]
    ix = open_index(root / "index", backbone="resnet50", weights=str(resnet_file))
    summary = ix.add([root], progress=None)
    assert summary.indexed == 7 and not summary.failed
    keras = import_keras()
    yield ix, pngs, jpgs, _reference(keras, "ResNet50", resnet_file, pngs + jpgs, (224, 224))
    ix.close()


@pytest.mark.slow
def test_png_vectors_equal_the_keras_recipe(resnet_case):
    ix, pngs, jpgs, ref = resnet_case
    ours = _ours(ix, pngs)
    cos = np.sum(ours * ref[: len(pngs)], axis=1)
    assert cos.min() >= 0.9999
    mean = ref.mean(axis=0)
    assert _centred_cos(ours, ref[: len(pngs)], mean).min() >= 0.999


@pytest.mark.slow
def test_large_jpeg_vectors_match_the_keras_recipe_despite_draft_decoding(resnet_case):
    ix, pngs, jpgs, ref = resnet_case
    ours = _ours(ix, jpgs)
    refj = ref[len(pngs) :]
    assert np.sum(ours * refj, axis=1).min() >= 0.99
    # Each image's vector is far closer to its own reference than to any other image's.
    mean = ref.mean(axis=0)
    sims = _unit(ours - mean) @ _unit(refj - mean).T
    assert (np.argmax(sims, axis=1) == np.arange(len(jpgs))).all()
    assert np.diag(sims).min() >= 0.9


@pytest.mark.slow
def test_query_by_new_file_embeds_like_the_recipe(resnet_case, tmp_path):
    ix, pngs, jpgs, ref = resnet_case
    copy = tmp_path / "copy.png"
    copy.write_bytes(pngs[1].read_bytes())
    q = ix.embed([copy])[0]
    assert float(q @ ref[1]) >= 0.9999
    hits = ix.search(copy, k=1)
    assert hits[0].path == str(pngs[1].resolve()) and hits[0].score >= 0.9999


@pytest.mark.slow
def test_xception_matches_its_own_recipe(tmp_path):
    keras = import_keras()
    keras.utils.set_random_seed(3)
    model = keras.applications.Xception(weights=None, include_top=False, pooling="avg")
    wfile = tmp_path / "xception_notop.weights.h5"
    model.save_weights(str(wfile))
    pngs = [make_image(tmp_path / "imgs" / f"x{i}.png", seed=300 + i, size=(320, 240)) for i in range(2)]
    ix = open_index(tmp_path / "index", backbone="xception", weights=str(wfile))
    ix.add([tmp_path / "imgs"])
    ours = _ours(ix, pngs)
    ref = _reference(keras, "Xception", wfile, pngs, (299, 299))
    assert np.sum(ours * ref, axis=1).min() >= 0.9999
    assert ix.stats()["dim"] == 2048
    ix.close()


# A sample of the table-driven keras.applications rows, one of each preprocessing kind: in-model
# rescaling (EfficientNetV2, ConvNeXt, MobileNetV3), "torch" normalisation (DenseNet), [-1, 1] (ResNetV2).
TABLE_SAMPLE = [
    ("efficientnetv2-b0", "efficientnet_v2", "EfficientNetV2B0"),
    ("convnext-tiny", "convnext", "ConvNeXtTiny"),
    ("densenet121", "densenet", "DenseNet121"),
    ("mobilenet-v3-small", "mobilenet_v3", "MobileNetV3Small"),
    ("resnet50v2", "resnet_v2", "ResNet50V2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,module,ctor", TABLE_SAMPLE)
def test_table_backbones_match_their_own_keras_recipe(tmp_path, name, module, ctor):
    """A weights file this test writes, loaded by Keras itself on the reference side."""
    from vecsearch.backbones import get_spec

    keras = import_keras()
    keras.utils.set_random_seed(11)
    built = getattr(keras.applications, ctor)(weights=None, include_top=False, pooling="avg")
    wfile = tmp_path / f"{name}.weights.h5"
    built.save_weights(str(wfile))
    pngs = [make_image(tmp_path / "imgs" / f"t{i}.png", seed=400 + i, size=(320 - 30 * i, 240 + 20 * i)) for i in range(3)]
    spec = get_spec(name)
    with open_index(tmp_path / "index", backbone=name, weights=str(wfile)) as ix:
        ix.add([tmp_path / "imgs"])
        ours = _ours(ix, pngs)
        assert ix.stats()["dim"] == spec.dim
    model = getattr(keras.applications, ctor)(weights=str(wfile), include_top=False, pooling="avg")
    side = spec.input_size
    ref = keras_recipe(model, pngs, (side[1], side[0]), getattr(keras.applications, module).preprocess_input)
    assert ref.shape[1] == spec.dim
    assert np.sum(ours * ref, axis=1).min() >= 0.9999
    assert _centred_cos(ours, ref, ref.mean(axis=0)).min() >= 0.999
