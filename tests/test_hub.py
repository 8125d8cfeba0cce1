"""keras-hub backbones (CLIP, SigLIP, DINOv2) against keras-hub's own pipeline, search by text,
and zero-shot classes: on small random-init presets each test session writes itself
(tests/hub_presets.py), so nothing is downloaded."""

from __future__ import annotations

import importlib.util
import json
import string
from pathlib import Path

import numpy as np
import pytest
from helpers import make_image, one_line_error, run, run_json
from hub_presets import MAKERS, SIDE
from PIL import Image

pytest.importorskip("keras_hub")

FAMILIES = ("clip", "siglip", "dinov2")
TEXT_FAMILIES = ("clip", "siglip")
PROMPTS = ["a red car", "a photo of a cat", "a dog on the beach", "The Tree, with a HOUSE!"]
LABELS = ["cat", "dog", "car"]


@pytest.fixture(scope="session")
def presets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-presets")
    return {family: make(root / family) for family, make in MAKERS.items()}


@pytest.fixture(scope="session")
def square_photos(tmp_path_factory) -> Path:
    """Images at the presets' input size: keras-hub's converter and vecsearch's resize both leave them as they are."""
    folder = tmp_path_factory.mktemp("square")
    for i in range(10):
        make_image(folder / f"p{i:02d}.png", seed=500 + i, size=(SIDE, SIDE))
    return folder


@pytest.fixture(scope="session")
def hub_indexes(tmp_path_factory, presets, square_photos) -> dict[str, Path]:
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"ix-{family}")
        run("index", square_photos, "--index", folder, "--backbone", f"tiny-{family}", "--weights", presets[family], "--quiet")
        out[family] = folder
    return out


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_images(family: str, preset: Path, paths: list[Path]) -> np.ndarray:
    """keras-hub's own pipeline: the preset's image converter, its backbone, its projection; L2-normalised."""
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in paths])
    x = converter(pixels)
    if family == "dinov2":
        out = np.asarray(backbone.predict({"images": x}, verbose=0))[:, 0, :]  # the CLS token
    else:
        out = keras.ops.convert_to_numpy(backbone.get_vision_embeddings(x))
    return unit(out)


def reference_texts(family: str, preset: Path, texts: list[str]) -> np.ndarray:
    """keras-hub's preprocessor (tokenizer, lower-casing, packing) and text tower with its projection."""
    import keras
    import keras_hub

    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    cls = {"clip": keras_hub.models.CLIPPreprocessor, "siglip": keras_hub.models.SigLIPPreprocessor}[family]
    pre = cls.from_preset(str(preset))
    if importlib.util.find_spec("tensorflow") is None:
        # keras-hub lower-cases (and for SigLIP strips punctuation) in TensorFlow ops only: without
        # TensorFlow (Keras on PyTorch) the test does it itself, with str methods, and turns it off there.
        pre.to_lower = pre.canonicalize_text = False
        table = str.maketrans("", "", string.punctuation) if family == "siglip" else {}
        texts = [" ".join(t.lower().translate(table).split()) if family == "siglip" else t.lower() for t in texts]
    images = np.zeros((len(texts), SIDE, SIDE, 3), np.float32)
    x = pre({"images": images, "prompts": texts})
    x = x[0] if isinstance(x, tuple) else x
    return unit(keras.ops.convert_to_numpy(backbone.get_text_embeddings(x["token_ids"])))


def stored(index: Path) -> tuple[list[str], np.ndarray]:
    from vecsearch import open_index

    with open_index(index, create=False) as ix:
        ids, X, _ = ix.store.vectors(ix.store.vector_ids(), dim=ix.info.dim)
        recs = ix.store.images(int(i) for i in ids)
        return [recs[int(i)].path for i in ids], np.asarray(X, np.float64)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_vectors_equal_keras_hubs_own_pipeline(family, presets, hub_indexes):
    paths, X = stored(hub_indexes[family])
    ref = reference_images(family, presets[family], [Path(p) for p in paths])
    cos = np.sum(unit(X) * ref, axis=1)
    assert cos.min() >= 0.9999, cos


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_vectors_equal_keras_hubs_own_pipeline(family, presets, hub_indexes):
    from vecsearch import open_index

    with open_index(hub_indexes[family], create=False) as ix:
        ours = ix.embed_text(PROMPTS)
    ref = reference_texts(family, presets[family], PROMPTS)
    assert ours.shape == ref.shape
    cos = np.sum(unit(ours) * ref, axis=1)
    assert cos.min() >= 0.9999, cos


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_query_text_returns_the_brute_force_ranking(family, presets, hub_indexes):
    paths, X = stored(hub_indexes[family])
    q = reference_texts(family, presets[family], ["a red car"])[0]
    scores = unit(X) @ q
    order = np.argsort(-scores, kind="stable")[:5]
    got = run_json("query", "--text", "a red car", "--k", "5", "--index", hub_indexes[family])
    assert [r["path"] for r in got] == [paths[i] for i in order]
    assert np.allclose([r["score"] for r in got], scores[order], atol=1e-4)


def test_query_text_with_filters_keeps_only_what_passes(hub_indexes, square_photos):
    got = run_json("query", "--text", "a cat", "--k", "3", "--min-score", "2e-9", "--index", hub_indexes["clip"])
    assert all(r["score"] >= 2e-9 for r in got)
    only = str(square_photos / "p03.png")
    got = run_json("query", "--text", "a cat", "--under", only, "--index", hub_indexes["clip"])
    assert [r["path"] for r in got] == [only]


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_zero_shot_predicts_the_argmax_of_text_image_cosine(family, presets, hub_indexes):
    paths, X = stored(hub_indexes[family])
    T = reference_texts(family, presets[family], [f"a photo of a {label}" for label in LABELS])
    expected = {p: LABELS[int(j)] for p, j in zip(paths, np.argmax(unit(X) @ T.T, axis=1), strict=True)}
    out = run_json("classify", "--zero-shot", ",".join(LABELS), "--index", hub_indexes[family])
    assert out["kind"] == "zero-shot" and out["params"]["labels"] == LABELS
    assert {p["path"]: p["label"] for p in out["predictions"]} == expected
    assert all(0 <= p["confidence"] <= 1 for p in out["predictions"])


def test_zero_shot_prompt_is_overridable_and_scored_on_taught_labels(presets, hub_indexes, square_photos, tmp_path):
    import shutil

    index = tmp_path / "ix"
    shutil.copytree(hub_indexes["clip"], index)
    paths, X = stored(index)
    taught = tmp_path / "taught.csv"
    taught.write_text("path,label\n" + "".join(f"{p},{LABELS[i % 3]}\n" for i, p in enumerate(paths[:6])))
    run("teach", taught, "--index", index, "--quiet")
    T = reference_texts("clip", presets["clip"], [f"the {label} in the house" for label in LABELS])
    pred = np.argmax(unit(X) @ T.T, axis=1)
    accuracy = np.mean([LABELS[int(pred[i])] == LABELS[i % 3] for i in range(6)])
    out = run_json("classify", "--zero-shot", "cat, dog,car", "--prompt", "the {label} in the house", "--index", index)
    assert [p["label"] for p in out["predictions"]] == [LABELS[int(j)] for j in pred]
    assert out["metrics"]["n_test"] == 6 and out["metrics"]["accuracy"] == pytest.approx(accuracy)
    # The probe on the same taught labels answers in the same shape, so the two can be compared.
    probe = run_json("classify", "--knn", "--k", "1", "--index", index)
    assert set(probe["metrics"]) >= set(out["metrics"]) - {"method"}


def test_text_with_an_image_only_backbone_names_the_ones_that_can(hub_indexes, indexed_photos):
    for index in (hub_indexes["dinov2"], indexed_photos[1]):
        line = one_line_error(run("query", "--text", "a red car", "--index", index, ok=False), "text tower")
        assert "clip_vit_base_patch16" in line and "--imagenet" in line
        one_line_error(run("classify", "--zero-shot", "cat,dog", "--index", index, ok=False), "text tower")


def test_bad_text_input_is_one_clear_line(hub_indexes):
    index = hub_indexes["clip"]
    one_line_error(run("query", "--text", "  ", "--index", index, ok=False), "empty")
    one_line_error(run("query", "--text", "x" * 5000, "--index", index, ok=False), "longer than")
    one_line_error(run("classify", "--zero-shot", "cat", "--index", index, ok=False), "at least two")
    one_line_error(run("classify", "--zero-shot", "cat,dog", "--prompt", "a photo", "--index", index, ok=False), "{label}")
    one_line_error(run("query", "--text", "car", "--explain", "out", "--index", index, ok=False), "--explain")


def test_another_preset_folder_is_refused_by_its_fingerprint(tmp_path, hub_indexes, square_photos):
    other = MAKERS["clip"](tmp_path / "other", seed=99)
    new = make_image(tmp_path / "new" / "n.png", seed=1, size=(SIDE, SIDE))
    result = run("index", new.parent, "--index", hub_indexes["clip"], "--weights", other, ok=False)
    one_line_error(result, "not the ones that built the index")


def test_a_folder_of_another_family_or_none_is_one_clear_line(tmp_path, presets, square_photos):
    result = run(
        "index", square_photos, "--index", tmp_path / "a", "--backbone", "tiny-clip", "--weights", presets["dinov2"], ok=False
    )
    one_line_error(result, "DINOV2Backbone", "not a CLIPBackbone")
    result = run(
        "index", square_photos, "--index", tmp_path / "b", "--backbone", "tiny-clip", "--weights", tmp_path / "nothing", ok=False
    )
    one_line_error(result, "not found", "preset folder", "--weights")


def test_random_init_has_no_text_and_says_how_to_get_it(tmp_path, square_photos):
    index = tmp_path / "ix"
    # A random init of a real preset's architecture, for speed trials: images only.
    run("index", square_photos, "--index", index, "--backbone", "tiny-dinov2", "--weights", "none", "--quiet", ok=False)
    run("index", square_photos, "--index", index, "--backbone", "clip_vit_base_patch32", "--weights", "none", "--quiet")
    info = run_json("stats", "--index", index)
    assert info["backbone"] == "clip_vit_base_patch32" and info["dim"] == 512
    one_line_error(run("query", "--text", "a car", "--index", index, ok=False), "no tokenizer", "preset folder")


def test_explain_says_it_is_not_available_for_a_vit(hub_indexes, square_photos):
    one_line_error(
        run("explain", square_photos / "p00.png", "--index", hub_indexes["clip"], "--out", "x.png", ok=False),
        "not available",
    )


def test_backbones_lists_the_keras_hub_presets():
    rows = {r["name"]: r for r in run_json("backbones")}
    assert rows["clip_vit_base_patch16"]["text"] and rows["clip_vit_base_patch16"]["dim"] == 512
    assert not rows["dinov2_small"]["text"] and rows["dinov2_small"]["dim"] == 384
    assert rows["siglip_base_patch16_224"]["source"] == "keras-hub siglip"
    assert rows["resnet50"]["text"] is False


def test_search_text_in_the_library_matches_the_cli(hub_indexes):
    from vecsearch import open_index

    with open_index(hub_indexes["siglip"], create=False) as ix:
        hits = ix.search_text("a dog on the beach", k=4)
    got = run_json("query", "--text", "a dog on the beach", "--k", "4", "--index", hub_indexes["siglip"])
    assert [h.path for h in hits] == [r["path"] for r in got]
    assert json.dumps([round(h.score, 5) for h in hits]) == json.dumps([round(r["score"], 5) for r in got])


def test_search_by_text_over_http_from_the_real_server(hub_indexes, presets):
    """`vecsearch serve` in its own process, over loopback: POST /api/v1/search/text ranks as brute force
    does, several prompts give one result set each, and an image-only index is a 400 that says why."""
    import httpx
    from helpers import start_serve, wait_until_serving

    from vecsearch.client import Client

    paths, X = stored(hub_indexes["clip"])
    prompts = ["a red car", "a photo of a cat"]
    T = reference_texts("clip", presets["clip"], prompts)
    procs = []
    try:
        proc, port = start_serve(hub_indexes["clip"])
        procs.append(proc)
        wait_until_serving(proc, port)
        base = f"http://127.0.0.1:{port}/api/v1"
        one = httpx.post(f"{base}/search/text?k=4", json={"text": prompts[0]}, timeout=60).json()
        order = np.argsort(-(unit(X) @ T[0]), kind="stable")[:4]
        assert [r["path"] for r in one["results"]] == [paths[i] for i in order]
        many = httpx.post(f"{base}/search/text?k=3", json={"texts": prompts}, timeout=60).json()
        for s, t in zip(many["searches"], T, strict=True):
            assert [r["path"] for r in s["results"]] == [paths[i] for i in np.argsort(-(unit(X) @ t), kind="stable")[:3]]
        assert [s["text"] for s in many["searches"]] == prompts
        assert [h.path for h in Client(f"http://127.0.0.1:{port}").search_text(prompts[0], k=4)] == [paths[i] for i in order]
        bad = httpx.post(f"{base}/search/text", json={"text": "a", "texts": ["b"]}, timeout=60)
        assert bad.status_code == 422 and "exactly one" in bad.json()["error"]
        assert httpx.post(f"{base}/search/text", json={"text": ""}, timeout=60).status_code == 422
        spec = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=60).json()
        assert set(spec["paths"]["/api/v1/search/text"]["post"]["responses"]) >= {"200", "400", "401", "422", "503"}

        proc, port = start_serve(hub_indexes["dinov2"])
        procs.append(proc)
        wait_until_serving(proc, port)
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/search/text", json={"text": "a red car"}, timeout=60)
        assert r.status_code == 400 and "text tower" in r.json()["error"] and r.json()["type"] == "NoTextTowerError"
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=30)


def test_a_missing_hub_extra_names_the_install_line(tmp_path, square_photos, monkeypatch):
    import sys

    from vecsearch.extras import install_line

    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if keras-hub were not installed
    result = run("index", square_photos, "--index", tmp_path / "ix", "--backbone", "dinov2_small", "--weights", "none", ok=False)
    line = one_line_error(result, "keras_hub", "not installed")
    assert install_line("hub") in line


def test_an_unreachable_preset_download_says_how_to_work_offline(tmp_path, square_photos, monkeypatch):
    import keras_hub

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /v1/models (NameResolutionError)")

    monkeypatch.setattr(keras_hub.models.DINOV2Backbone, "from_preset", offline)
    result = run("index", square_photos, "--index", tmp_path / "ix", "--backbone", "dinov2_small", ok=False)
    line = one_line_error(result, "could not get the keras-hub preset dinov2_small", "save_to_preset", "--weights FOLDER")
    assert "NameResolutionError" in line
    one_line_error(run("stats", "--index", tmp_path / "ix", ok=False), "empty")  # nothing half-made was kept


def test_a_plugins_hub_backbone_names_its_module_for_ray_workers():
    from vecsearch.backbones import get_spec, plugin_module

    assert plugin_module(get_spec("tiny-clip")) == "tiny_backbone"  # a worker imports it before building
    assert plugin_module(get_spec("clip_vit_base_patch16")) == ""  # built in


@pytest.mark.slow
def test_the_ray_engine_embeds_with_a_keras_hub_backbone(tmp_path, presets, square_photos):
    """`index --engine ray` on a local Ray: its workers load the preset folder and give the vectors the
    in-process model gives (a plugin's keras-hub backbone is imported on the workers by its module)."""
    import os
    import subprocess
    import sys

    from helpers import TESTS

    from vecsearch import open_index

    pytest.importorskip("ray")
    index = tmp_path / "ix"
    argv = ["index", str(square_photos), "--index", str(index), "--backbone", "tiny-clip", "--weights", str(presets["clip"])]
    argv += ["--engine", "ray", "--workers", "1", "--quiet"]
    code = f"import tiny_backbone; from vecsearch.cli import app; app({argv!r})"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    paths, X = stored(index)
    assert len(paths) == 10
    with open_index(index, create=False) as ix:
        here = ix.embed(paths)
    assert np.sum(unit(X) * here, axis=1).min() >= 0.9999


def test_an_unknown_keras_hub_preset_says_how_to_register_it():
    from vecsearch.backbones import get_spec
    from vecsearch.errors import UnknownBackboneError

    with pytest.raises(UnknownBackboneError, match="hub_spec\\('siglip2_base_patch16_224', 'siglip'") as e:
        get_spec("siglip2_base_patch16_224")
    assert "siglip_base_patch16_224" in str(e.value)
