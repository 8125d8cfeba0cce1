"""Small random-init keras-hub presets that a test writes itself (`save_to_preset`), with a
tokenizer vocabulary it writes too: CLIP (byte-pair merges), SigLIP (a SentencePiece model
trained here on a few sentences) and DINOv2. Their backbones are registered in tiny_backbone.py
as tiny-clip, tiny-siglip and tiny-dinov2."""

from __future__ import annotations

import io
from pathlib import Path

SIDE = 32
CLIP_DIM = 24
SIGLIP_DIM = 32
DINOV2_DIM = 32
WORDS = "a photo of the red blue green car cat dog beach tree house on in with".split()
SENTENCES = [
    "a photo of a cat",
    "a photo of a dog on the beach",
    "a red car in the house",
    "a blue tree with a green dog",
    "the cat on the car",
    "a photo of the house with a tree",
]


def _keras_hub():
    import keras

    from vecsearch.hub import import_keras_hub  # with its fix for keras-hub's tokenizer without tensorflow-text

    return keras, import_keras_hub()


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-pair vocabulary and merges that spell WORDS whole and every other word by letters."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    merges: list[str] = []
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        for token in (ch, ch + "</w>"):
            vocab.setdefault(token, len(vocab))
    for word in WORDS:
        tokens = list(word[:-1]) + [word[-1] + "</w>"]
        while len(tokens) > 1:
            merge = f"{tokens[0]} {tokens[1]}"
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(tokens[0] + tokens[1], len(vocab))
            tokens = [tokens[0] + tokens[1], *tokens[2:]]
    return vocab, merges


def make_clip(folder: Path, seed: int = 7) -> Path:
    keras, keras_hub = _keras_hub()
    keras.utils.set_random_seed(seed)
    vocab, merges = clip_vocabulary()
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64, image_shape=(SIDE, SIDE, 3)
    )
    text = keras_hub.models.CLIPTextEncoder(
        vocabulary_size=len(vocab),
        embedding_dim=32,
        hidden_dim=32,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    backbone = keras_hub.models.CLIPBackbone(vision, text, projection_dim=CLIP_DIM)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocab, merges=merges)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(SIDE, SIDE),
        scale=[1 / 255 / s for s in (0.26862954, 0.26130258, 0.27577711)],
        offset=[-m / s for m, s in zip((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), strict=True)],
    )
    preprocessor = keras_hub.models.CLIPPreprocessor(tokenizer=tokenizer, image_converter=converter, sequence_length=16)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


def sentencepiece_proto() -> bytes:
    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_writer=out,
        vocab_size=60,
        model_type="unigram",
        pad_id=-1,
        unk_id=0,
        bos_id=-1,
        eos_id=1,
        unk_piece="<unk>",
        eos_piece="</s>",
        hard_vocab_limit=False,
        minloglevel=3,
    )
    return out.getvalue()


def make_siglip(folder: Path, seed: int = 8) -> Path:
    keras, keras_hub = _keras_hub()
    keras.utils.set_random_seed(seed)
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=sentencepiece_proto())
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=SIGLIP_DIM, num_layers=2, num_heads=2, intermediate_dim=64, image_shape=(SIDE, SIDE, 3)
    )
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=tokenizer.vocabulary_size(),
        embedding_dim=SIGLIP_DIM,
        hidden_dim=SIGLIP_DIM,
        num_layers=2,
        num_heads=2,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    converter = keras_hub.layers.SigLIPImageConverter(image_size=(SIDE, SIDE), scale=1 / 127.5, offset=-1.0)
    preprocessor = keras_hub.models.SigLIPPreprocessor(tokenizer=tokenizer, image_converter=converter, sequence_length=16)
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


def make_dinov2(folder: Path, seed: int = 9) -> Path:
    keras, keras_hub = _keras_hub()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=8,
        num_layers=2,
        hidden_dim=DINOV2_DIM,
        num_heads=2,
        intermediate_dim=64,
        image_shape=(SIDE, SIDE, 3),
        position_embedding_shape=(SIDE, SIDE, 3),
    )
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(SIDE, SIDE),
        scale=[1 / 255 / s for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)],
    )
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


MAKERS = {"clip": make_clip, "siglip": make_siglip, "dinov2": make_dinov2}
