"""keras-hub backbones: DINOv2 (images only), CLIP and SigLIP (images and text in one space).

Each preset name of the table below is a backbone (`--backbone clip_vit_base_patch16`). Its
weights are the preset's own (downloaded and cached by keras-hub from Kaggle on a user's
machine), a local preset folder (what `save_to_preset` writes: config.json, model.weights.h5,
the image converter and, for CLIP and SigLIP, the tokenizer and preprocessor), or a seeded
random init of the preset's architecture (speed trials; no tokenizer, so no text).

The image model vecsearch calls is keras-hub's own pipeline made into one Keras model: the
preset's image converter's scale and offset, the vision tower and its projection (CLIP,
SigLIP: `get_vision_embeddings`; DINOv2: the CLS token of the normalised sequence). Images are
resized whole to the preset's input size, as for every backbone; keras-hub's converter crops
to the aspect ratio first, so vectors equal keras-hub's exactly for square images.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import VecsearchError, WeightsUnavailableError, short_error

log = logging.getLogger(__name__)

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Family:
    """One keras-hub model family: its classes, whether it has a text tower, and the image
    converter a random init gets (a preset's own converter says its values)."""

    name: str
    backbone: str  # keras_hub.models class
    preprocessor: str  # keras_hub.models class ("" without text)
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    @property
    def text(self) -> bool:
        return bool(self.preprocessor)


def _from_mean_std(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(1 / 255 / s for s in std), tuple(-m / s for m, s in zip(mean, std, strict=True))


FAMILIES = {
    "clip": Family("clip", "CLIPBackbone", "CLIPPreprocessor", *_from_mean_std(CLIP_MEAN, CLIP_STD)),
    "siglip": Family("siglip", "SigLIPBackbone", "SigLIPPreprocessor", (1 / 127.5,) * 3, (-1.0,) * 3),
    "dinov2": Family("dinov2", "DINOV2Backbone", "", *_from_mean_std(IMAGENET_MEAN, IMAGENET_STD)),
}


def _encoder(width, layers, heads, **more):
    """A transformer tower's arguments: keras-hub's CLIP, SigLIP and DINOv2 towers name them alike (MLP 4x wide)."""
    return dict(hidden_dim=width, num_layers=layers, num_heads=heads, intermediate_dim=4 * width, **more)


def _clip(patch, width, layers, heads, text_width, text_layers, text_heads, projection, side=224):
    return {
        "vision": _encoder(width, layers, heads, patch_size=patch),
        "text": _encoder(
            text_width, text_layers, text_heads, vocabulary_size=49408, embedding_dim=text_width, max_sequence_length=77
        ),
        "projection_dim": projection,
        "side": side,
    }


def _siglip(side, width=768, layers=12, heads=12):
    return {
        "vision": _encoder(width, layers, heads, patch_size=16),
        "text": _encoder(width, layers, heads, vocabulary_size=32000, embedding_dim=width, max_sequence_length=64),
        "side": side,
    }


def _dinov2(width, layers, heads, registers=0):
    backbone = _encoder(width, layers, heads, patch_size=14, num_register_tokens=registers, image_shape=(224, 224, 3))
    return {"backbone": backbone, "side": 224}


@dataclass(frozen=True)
class Preset:
    """A keras-hub preset vecsearch knows: its family, input side and vector width, and the
    constructor arguments of its architecture (None: no random init; use its weights)."""

    name: str
    family: str
    side: int
    dim: int
    architecture: dict | None = None


PRESETS: tuple[Preset, ...] = (
    Preset("clip_vit_base_patch16", "clip", 224, 512, _clip(16, 768, 12, 12, 512, 12, 8, 512)),
    Preset("clip_vit_base_patch32", "clip", 224, 512, _clip(32, 768, 12, 12, 512, 12, 8, 512)),
    Preset("clip_vit_large_patch14", "clip", 224, 768, _clip(14, 1024, 24, 16, 768, 12, 12, 768)),
    Preset("clip_vit_large_patch14_336", "clip", 336, 768, _clip(14, 1024, 24, 16, 768, 12, 12, 768, side=336)),
    Preset("clip_vit_b_32_laion2b_s34b_b79k", "clip", 224, 512),
    Preset("clip_vit_h_14_laion2b_s32b_b79k", "clip", 224, 1024),
    Preset("siglip_base_patch16_224", "siglip", 224, 768, _siglip(224)),
    Preset("siglip_base_patch16_256", "siglip", 256, 768, _siglip(256)),
    Preset("siglip_base_patch16_384", "siglip", 384, 768, _siglip(384)),
    Preset("siglip_base_patch16_512", "siglip", 512, 768, _siglip(512)),
    Preset("siglip_large_patch16_256", "siglip", 256, 1024),
    Preset("siglip_large_patch16_384", "siglip", 384, 1024),
    Preset("siglip_so400m_patch14_224", "siglip", 224, 1152),
    Preset("siglip_so400m_patch14_384", "siglip", 384, 1152),
    Preset("dinov2_small", "dinov2", 224, 384, _dinov2(384, 12, 6)),
    Preset("dinov2_base", "dinov2", 224, 768, _dinov2(768, 12, 12)),
    Preset("dinov2_large", "dinov2", 224, 1024, _dinov2(1024, 24, 16)),
    Preset("dinov2_giant", "dinov2", 224, 1536),
    Preset("dinov2_with_registers_small", "dinov2", 224, 384, _dinov2(384, 12, 6, registers=4)),
    Preset("dinov2_with_registers_base", "dinov2", 224, 768, _dinov2(768, 12, 12, registers=4)),
    Preset("dinov2_with_registers_large", "dinov2", 224, 1024, _dinov2(1024, 24, 16, registers=4)),
)


def is_preset_folder(path: Path) -> bool:
    """A local keras-hub preset: a folder with the backbone's config.json."""
    return path.is_dir() and (path / "config.json").is_file()


def import_keras_hub():
    from .extras import require_extra

    require_extra("hub", needed_for="keras-hub backbones (CLIP, SigLIP, DINOv2)")
    import keras_hub

    _work_around_tokenizer_without_tf_text()
    return keras_hub


def _set_vocabulary_and_merges_tf(self, vocabulary, merges):
    """keras-hub's BytePairTokenizer stores the vocabulary only on its TensorFlow path; without
    tensorflow-text (Keras on JAX or PyTorch) that path raises ImportError, which keras-hub
    swallows, and its `tokenizers` path then reads a vocabulary that was never set. This sets
    it, then raises the same ImportError, so keras-hub goes on as it means to."""
    self.vocabulary = vocabulary.copy()
    self.merges = merges
    raise ImportError("tensorflow-text is not installed")


def _work_around_tokenizer_without_tf_text() -> None:
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        from keras_hub.src.tokenizers import byte_pair_tokenizer

        byte_pair_tokenizer.BytePairTokenizer._set_vocabulary_and_merges_tf = _set_vocabulary_and_merges_tf
    except Exception:  # noqa: BLE001 - a broken tensorflow-text is keras-hub's to report
        log.debug("tensorflow-text did not import", exc_info=True)


@dataclass
class HubModels:
    """A loaded keras-hub backbone as vecsearch calls it."""

    image: Any  # keras.Model: (n, h, w, 3) RGB 0..255 -> (n, dim) raw vectors
    whole: Any  # the keras-hub backbone (its weights are fingerprinted)
    text: "TextTower | None"
    no_text_reason: str  # why `text` is None ("" when it is not)
    preprocessing: str  # the converter's scale and offset, for the fingerprint


def canonical_text(family: str, text: str) -> str:
    """What the family's preprocessor does to a prompt before its tokenizer (keras-hub does it in
    TensorFlow ops; done here in Python so JAX and PyTorch need no TensorFlow): CLIP lowers the
    case; SigLIP also strips punctuation and runs of whitespace, as big_vision does."""
    text = text.lower()
    if family == "siglip":
        text = re.sub(r"[!\"#$%&\\'()*+,\-./:;<=>?@\[\]^_`{|}~]", "", text)
        text = re.sub(r"\s+", " ", text).strip()
    return text


class TextTower:
    """Prompts to raw text vectors in the image vectors' space, through the preset's own tokenizer
    and start/end packer and the backbone's text tower and projection."""

    def __init__(self, family: str, preprocessor, whole, keras):
        self.family = family
        self.preprocessor = preprocessor
        if not preprocessor.built:
            preprocessor.build(None)
        ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        self.model = keras.Model(ids, whole.get_text_embeddings(ids))

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        pre = self.preprocessor
        tokens = pre.tokenizer([canonical_text(self.family, t) for t in texts])
        ids = pre.packer(
            tokens, sequence_length=pre.sequence_length, add_start_value=pre.add_start_token, add_end_value=pre.add_end_token
        )
        ids = ids[0] if isinstance(ids, tuple) else ids
        return np.asarray(ids, dtype=np.int32)

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.predict_on_batch(self.token_ids(texts))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


def _random_init(keras_hub, preset: Preset, dtype: str):
    arch = preset.architecture
    if arch is None:
        raise WeightsUnavailableError(
            f"vecsearch has no random-init architecture for {preset.name}; use its weights: imagenet (the "
            "preset's own, downloaded by keras-hub) or a local preset folder.",
            option="weights",
        )
    side = arch["side"]
    if preset.family == "clip":
        models = keras_hub.models
        vision = models.CLIPVisionEncoder(**arch["vision"], image_shape=(side, side, 3), dtype=dtype)
        text = models.CLIPTextEncoder(**arch["text"], dtype=dtype)
        return models.CLIPBackbone(vision, text, projection_dim=arch["projection_dim"], dtype=dtype)
    if preset.family == "siglip":
        models = keras_hub.models
        vision = models.SigLIPVisionEncoder(**arch["vision"], image_shape=(side, side, 3), dtype=dtype)
        text = models.SigLIPTextEncoder(**arch["text"], dtype=dtype)
        return models.SigLIPBackbone(vision, text, dtype=dtype)
    return keras_hub.models.DINOV2Backbone(**arch["backbone"], dtype=dtype)


def _load_whole(keras_hub, preset: Preset, family: Family, kind: str, where: str, dtype: str):
    if kind == "random":
        return _random_init(keras_hub, preset, dtype)
    if kind == "file":
        config = Path(where) / "config.json"
        try:
            class_name = json.loads(config.read_text()).get("class_name", "")
        except (OSError, ValueError) as e:
            raise WeightsUnavailableError(f"{config} is not a keras-hub preset config: {short_error(e)}", option="weights") from e
        if class_name != family.backbone:
            raise WeightsUnavailableError(
                f"The preset folder {where} holds a {class_name or 'model of no class'}, not a {family.backbone}: "
                f"it is not {preset.name}.",
                option="weights",
            )
    try:
        return getattr(keras_hub.models, family.backbone).from_preset(where, dtype=dtype)
    except Exception as e:  # keras-hub and kagglehub raise many kinds on a failed download
        raise _unavailable(preset, family, kind, where, e) from e


def _unavailable(preset: Preset, family: Family, kind: str, where: str, e: Exception) -> WeightsUnavailableError:
    if kind == "file":
        return WeightsUnavailableError(f"Could not load the preset folder {where}: {short_error(e)}", option="weights")
    return WeightsUnavailableError(
        f"Could not get the keras-hub preset {preset.name} ({short_error(e)}). Without network access, save it on "
        f"another machine (keras_hub.models.{family.backbone}.from_preset({preset.name!r}) and its "
        f"{'keras_hub.models.' + family.preprocessor if family.preprocessor else 'image converter'}, each "
        ".save_to_preset(FOLDER)) and give that folder as the weights, or use weights none for a random-init trial.",
        option="weights",
    )


def _converter(keras_hub, preset: Preset, family: Family, kind: str, where: str):
    """The preset's image converter's (scale, offset, side); a random init takes the family's."""
    if kind == "random":
        return family.scale, family.offset, preset.side
    try:
        conv = keras_hub.layers.ImageConverter.from_preset(where)
    except Exception as e:  # noqa: BLE001 - a preset without a converter file
        if kind != "file":
            raise _unavailable(preset, family, kind, where, e) from e
        raise WeightsUnavailableError(
            f"The preset {where} has no image converter ({short_error(e)}); save one with "
            f"keras_hub.layers.ImageConverter.save_to_preset(FOLDER).",
            option="weights",
        ) from e
    size = conv.image_size
    side = int(size[0]) if size else preset.side
    if size and int(size[0]) != int(size[1]):
        raise VecsearchError(f"The preset {where} resizes to {size[0]}x{size[1]}; vecsearch handles square inputs only.")

    def triple(v, default):
        if v is None:
            return (default,) * 3
        a = np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (3,))
        return tuple(float(x) for x in a)

    return triple(conv.scale, 1.0), triple(conv.offset, 0.0), side


def _preprocessor(keras_hub, preset: Preset, family: Family, kind: str, where: str):
    if not family.text:
        return None, f"{preset.name} has no text tower (DINOv2 embeds images only)"
    if kind == "random":
        return None, f"a random-init {preset.name} has no tokenizer vocabulary; give a local preset folder as the weights"
    try:
        return getattr(keras_hub.models, family.preprocessor).from_preset(where), ""
    except Exception as e:  # noqa: BLE001 - images still work without it
        log.debug("no preprocessor in %s", where, exc_info=True)
        return None, f"the preset {where} has no tokenizer or preprocessor ({short_error(e)})"


def load(preset: Preset, kind: str, path: str | None, keras, dtype: str) -> HubModels:
    """Build the image model (and text tower) of `preset` with weights of `kind` ("imagenet": the
    preset's own; "file": the preset folder `path`; "random": seeded by the caller)."""
    keras_hub = import_keras_hub()
    family = FAMILIES[preset.family]
    where = path if kind == "file" and path else preset.name  # a folder, or the name keras-hub downloads
    scale, offset, side = _converter(keras_hub, preset, family, kind, where)
    if side != preset.side:
        raise VecsearchError(f"The preset {where} takes {side}x{side} images; {preset.name} takes {preset.side}.")
    whole = _load_whole(keras_hub, preset, family, kind, where, dtype)
    images = keras.Input(shape=(side, side, 3), name="images")
    x = keras.layers.Rescaling(scale=list(scale), offset=list(offset), name="image_converter")(images)
    if family.text:
        out = whole.get_vision_embeddings(x)
    else:
        out = whole({"images": x})[:, 0, :]  # DINOv2's CLS token, after its final layer norm
    image_model = keras.Model(images, out, name=f"{preset.name}_images")
    preprocessor, reason = _preprocessor(keras_hub, preset, family, kind, where)
    text = TextTower(preset.family, preprocessor, whole, keras) if preprocessor is not None else None
    return HubModels(image_model, whole, text, reason, json.dumps({"scale": scale, "offset": offset, "side": side}))
