"""A tiny deterministic Keras backbone for tests where the model is not the point.

Registered through the public `register()` API, the way a plugin would add a backbone.
Importable from a subprocess too (tests put this folder on sys.path).
"""

import os
import time

from vecsearch.backbones import BackboneSpec, hub_spec, import_keras, register

TINY_DIM = 32


def _build(weights, include_top):
    keras = import_keras()
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(TINY_DIM, 3, strides=2, activation="relu", name="conv2")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        out = keras.layers.Dense(10, activation="softmax", name="predictions")(pooled)
        model = keras.Model(inputs, out, name="tiny")
    else:
        model = keras.Model(inputs, pooled, name="tiny")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


def _preprocess(x):
    # TINY_BACKBONE_DELAY slows each batch so a test can kill an indexing run mid-way.
    delay = float(os.environ.get("TINY_BACKBONE_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return x / 127.5 - 1.0


TINY = register(BackboneSpec("tiny", (32, 32), TINY_DIM, _build, _preprocess, has_imagenet=False, last_conv_layer="conv2"))

# Small keras-hub backbones: their weights are preset folders a test writes (tests/hub_presets.py).
TINY_CLIP = register(hub_spec("tiny-clip", "clip", 32, 24))
TINY_SIGLIP = register(hub_spec("tiny-siglip", "siglip", 32, 32))
TINY_DINOV2 = register(hub_spec("tiny-dinov2", "dinov2", 32, 32))
