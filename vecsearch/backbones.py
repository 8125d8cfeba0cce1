"""Registry of frozen Keras backbones used as pooled feature extractors.

A backbone is a Keras application built with ``include_top=False, pooling="avg"``; the
registry says how to build it, what size it eats, how to preprocess and how wide its
vector is. Weights come from ImageNet (downloaded and cached by Keras), a local file, or a
seeded random init (offline trials and tests). The fingerprint is a hash of the actual
weight values, so an index can refuse a model that is not the one that built it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import logging
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

import numpy as np

from . import hub
from .errors import (
    IndexMismatchError,
    NoTextTowerError,
    UnknownBackboneError,
    VecsearchError,
    WeightsUnavailableError,
    short_error,
)

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "resnet50"
DEFAULT_SEED = 1234

PRECISIONS = ("float32", "mixed")
"""Compute precision of a backbone: float32, or Keras's mixed policy (float16 on a GPU,
bfloat16 on a CPU; weights stay float32). Vectors are stored as float32 either way."""
DEFAULT_PRECISION = "float32"
MIXING_MIN_COSINE = 0.999
"""Embeddings of another precision share an index only when they agree with its stored
vectors to at least this cosine (checked on a few images when such a run starts)."""


def recorded_precision(info) -> str:
    """The precision an index records (its `index_info` row); NULL, from before 0.3, is float32."""
    return info.precision or DEFAULT_PRECISION


BACKEND_MODULES = ("tensorflow", "jax", "torch")
"""Keras's backends, by the module that must be installed for each."""


def import_keras():
    """Import Keras with our defaults: oneDNN on for TensorFlow (measured ~35% faster here).

    TensorFlow's C++ start-up banner goes to fd 2 before any log level applies, so the first
    import runs with fd 2 pointed at a temp file, which is replayed only if the import fails.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryFile() as captured:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):
            saved = None
        if saved is not None:
            os.dup2(captured.fileno(), 2)
        try:
            import keras
        except BaseException as e:
            missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in BACKEND_MODULES
            if saved is not None and not missing:
                os.dup2(saved, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
            if missing:  # installed without a backend extra: say which line to run
                from .extras import install_line

                raise VecsearchError(
                    f"Keras has no backend to run on ({e}). Install one: {install_line('cpu')} (TensorFlow for "
                    f"the CPU) or {install_line('gpu')} (TensorFlow with CUDA); "
                    "or install jax or torch and set KERAS_BACKEND=jax or KERAS_BACKEND=torch."
                ) from None
            raise
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
    return keras


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one backbone.

    `build(weights, include_top)` returns a Keras model; with include_top=False it must
    output the pooled feature vector of width `dim`. `preprocess` maps a float32 batch of
    RGB 0..255 pixels to what the network expects. `weights_file` names the official
    no-top weights file, quoted in the message when ImageNet weights can't be fetched.
    `last_conv_layer` names the layer whose feature map the global average pool reads
    (explanations are maps over it); "" means "find it from the model's last pooling layer".
    `explainable` is False where the pooled vector is not the mean of one feature map (ConvNeXt
    normalises it after the pool; a ViT has no map), so no map sums to its scores.
    `hub` names the keras-hub family ("clip", "siglip", "dinov2"; "" for keras.applications):
    such a backbone is loaded by `hub.load`, not `build`, and `text` says it embeds prompts too.
    """

    name: str
    input_size: tuple[int, int]  # (width, height)
    dim: int
    build: Callable[[Any, bool], Any]
    preprocess: Callable[[Any], Any]
    weights_file: str = ""
    has_imagenet: bool = True
    last_conv_layer: str = ""
    explainable: bool = True
    hub: str = ""
    text: bool = False


def _app(module: str, cls: str, input_shape: tuple[int, int, int] | None = None) -> tuple[Callable, Callable]:
    shape = {"input_shape": input_shape} if input_shape else {}

    def build(weights, include_top):
        keras = import_keras()
        ctor = getattr(keras.applications, cls)
        if include_top:
            return ctor(weights=weights, include_top=True)
        return ctor(weights=weights, include_top=False, pooling="avg", **shape)

    def preprocess(x):
        keras = import_keras()
        return getattr(keras.applications, module).preprocess_input(x)

    return build, preprocess


def _spec(name, module, cls, size, dim, weights_file, last_conv_layer):
    build, preprocess = _app(module, cls)
    return BackboneSpec(name, (size, size), dim, build, preprocess, weights_file, last_conv_layer=last_conv_layer)


REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add (or replace) a backbone; how tests and plugins extend the registry."""
    REGISTRY[spec.name] = spec
    return spec


# The last layer is the one the global average pool reads (tested): for VGG16 that is
# block5_pool, not block5_conv3, since only the pool's own input makes a map that sums
# exactly to the score.
for _s in (
    _spec(
        "resnet50", "resnet50", "ResNet50", 224, 2048, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "conv5_block3_out"
    ),
    _spec(
        "xception",
        "xception",
        "Xception",
        299,
        2048,
        "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "block14_sepconv2_act",
    ),
    _spec(
        "inception_v3",
        "inception_v3",
        "InceptionV3",
        299,
        2048,
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "mixed10",
    ),
    _spec("vgg16", "vgg16", "VGG16", 224, 512, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "block5_pool"),
    _spec("mobilenet", "mobilenet", "MobileNet", 224, 1024, "mobilenet_1_0_224_tf_no_top.h5", "conv_pw_13_relu"),
):
    register(_s)

# Every other image model of keras.applications, one row each: (name, module, class, input side,
# pooled width, Keras's no-top weights file). Their last convolutional layer is found from the
# pooling layer (`last_conv_layer` ""). The first five above keep their hand-written rows, so the
# indexes they built open unchanged. EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3
# rescale inside the model; their preprocess_input passes pixels through, as Keras documents.
_TF_KERNELS = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_APPLICATIONS: tuple[tuple[str, str, str, int, int, str], ...] = (
    ("vgg19", "vgg19", "VGG19", 224, 512, "vgg19" + _TF_KERNELS),
    ("resnet101", "resnet", "ResNet101", 224, 2048, "resnet101" + _TF_KERNELS),
    ("resnet152", "resnet", "ResNet152", 224, 2048, "resnet152" + _TF_KERNELS),
    ("resnet50v2", "resnet_v2", "ResNet50V2", 224, 2048, "resnet50v2" + _TF_KERNELS),
    ("resnet101v2", "resnet_v2", "ResNet101V2", 224, 2048, "resnet101v2" + _TF_KERNELS),
    ("resnet152v2", "resnet_v2", "ResNet152V2", 224, 2048, "resnet152v2" + _TF_KERNELS),
    ("densenet121", "densenet", "DenseNet121", 224, 1024, "densenet121" + _TF_KERNELS),
    ("densenet169", "densenet", "DenseNet169", 224, 1664, "densenet169" + _TF_KERNELS),
    ("densenet201", "densenet", "DenseNet201", 224, 1920, "densenet201" + _TF_KERNELS),
    ("inception-resnet-v2", "inception_resnet_v2", "InceptionResNetV2", 299, 1536, "inception_resnet_v2" + _TF_KERNELS),
    (
        "mobilenet-v2",
        "mobilenet_v2",
        "MobileNetV2",
        224,
        1280,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    ),
    ("mobilenet-v3-small", "mobilenet_v3", "MobileNetV3Small", 224, 576, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    ("mobilenet-v3-large", "mobilenet_v3", "MobileNetV3Large", 224, 960, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    ("nasnet-mobile", "nasnet", "NASNetMobile", 224, 1056, "nasnet_mobile_no_top.h5"),
    ("nasnet-large", "nasnet", "NASNetLarge", 331, 4032, "nasnet_large_no_top.h5"),
    *(
        (f"efficientnet-b{i}", "efficientnet", f"EfficientNetB{i}", side, dim, f"efficientnetb{i}_notop.h5")
        for i, side, dim in (
            (0, 224, 1280),
            (1, 240, 1280),
            (2, 260, 1408),
            (3, 300, 1536),
            (4, 380, 1792),
            (5, 456, 2048),
            (6, 528, 2304),
            (7, 600, 2560),
        )
    ),
    *(
        (f"efficientnetv2-{v}", "efficientnet_v2", f"EfficientNetV2{v.upper()}", side, dim, f"efficientnetv2-{v}_notop.h5")
        for v, side, dim in (
            ("b0", 224, 1280),
            ("b1", 240, 1280),
            ("b2", 260, 1408),
            ("b3", 300, 1536),
            ("s", 384, 1280),
            ("m", 480, 1280),
            ("l", 480, 1280),
        )
    ),
    *(
        (f"convnext-{v}", "convnext", f"ConvNeXt{cls}", 224, dim, f"convnext_{v}_notop.h5")
        for v, cls, dim in (
            ("tiny", "Tiny", 768),
            ("small", "Small", 768),
            ("base", "Base", 1024),
            ("large", "Large", 1536),
            ("xlarge", "XLarge", 2048),
        )
    ),
)
for _name, _module, _cls, _side, _dim, _file in KERAS_APPLICATIONS:
    # Built at their input size (NASNetLarge cannot build without it); the weights do not depend on it.
    _make, _pre = _app(_module, _cls, (_side, _side, 3))
    register(BackboneSpec(_name, (_side, _side), _dim, _make, _pre, _file, explainable=_module != "convnext"))


def _hub_builder(module: str) -> Callable[[Any, bool], Any]:
    def build(weights, include_top):
        raise VecsearchError("A keras-hub backbone is loaded by vecsearch.hub.load, not built from keras.applications.")

    build.__module__ = module  # what `plugin_module` reads: a Ray worker imports the module that registered it
    return build


def _as_is(x):
    return x  # a keras-hub backbone's scale and offset are a layer of its model (they come with its weights)


def hub_spec(name: str, family: str, side: int, dim: int) -> BackboneSpec:
    """The spec of a keras-hub backbone of `family` ("clip", "siglip", "dinov2"): how another preset
    (or a test's small one) becomes a backbone, with `register(hub_spec(...))` and a preset folder as weights."""
    if family not in hub.FAMILIES:
        raise UnknownBackboneError(f"Unknown keras-hub family {family!r}; choose one of: {', '.join(hub.FAMILIES)}.")
    caller = inspect.currentframe()
    outer = caller.f_back if caller is not None else None
    module = outer.f_globals.get("__name__", __name__) if outer is not None else __name__
    return BackboneSpec(
        name,
        (side, side),
        dim,
        _hub_builder(module),
        _as_is,
        has_imagenet=False,
        explainable=False,
        hub=family,
        text=hub.FAMILIES[family].text,
    )


for _p in hub.PRESETS:
    register(hub_spec(_p.name, _p.family, _p.side, _p.dim))


def plugin_module(spec: BackboneSpec) -> str:
    """The module that registered `spec` when it is not built in (a plugin's `register()`), else "":
    what a worker or replica on another machine must import before it can build the backbone."""
    module = getattr(spec.build, "__module__", "") or ""
    return "" if module.split(".")[0] in ("vecsearch", "") else module


def catalogue() -> list[dict]:
    """Every registered backbone, as `vecsearch backbones` lists it: what it eats and gives, and
    what else it can do (ImageNet labels need its top; explanations its last convolutional layer)."""
    rows = []
    for spec in sorted(REGISTRY.values(), key=lambda s: s.name):
        plugin = plugin_module(spec)
        rows.append(
            {
                "name": spec.name,
                "input": f"{spec.input_size[0]}x{spec.input_size[1]}",
                "dim": spec.dim,
                "imagenet_top": spec.has_imagenet,
                "last_conv_layer": (spec.last_conv_layer or "(from the pooling layer)") if spec.explainable else None,
                "text": spec.text,
                "source": f"plugin {plugin}" if plugin else (f"keras-hub {spec.hub}" if spec.hub else "keras.applications"),
            }
        )
    return rows


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        family = next((f for f in hub.FAMILIES if name.lower().startswith(f)), None)
        if family is not None:  # another keras-hub preset: its width and input size are not known here
            raise UnknownBackboneError(
                f"Unknown backbone {name!r}: vecsearch knows these {family} presets: "
                f"{', '.join(p.name for p in hub.PRESETS if p.family == family)}. For another keras-hub preset, "
                f"register it first: vecsearch.register(vecsearch.backbones.hub_spec({name!r}, {family!r}, SIDE, DIM)) "
                "with its input side and vector width (a plugin module, as for any backbone)."
            ) from None
        known = ", ".join(sorted(REGISTRY))
        raise UnknownBackboneError(f"Unknown backbone {name!r}; choose one of: {known}.") from None


@dataclass(frozen=True)
class WeightsSpec:
    """What the user asked for: `imagenet`, a seeded random init, or a local file."""

    kind: str  # "imagenet" | "random" | "file"
    seed: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, value: Any, seed: int | None = None) -> "WeightsSpec":
        """Accept "imagenet", None / "none" / "random" (seeded), or a path to a weights file."""
        if value is None or (isinstance(value, str) and value.lower() in ("none", "random")):
            return cls("random", seed=DEFAULT_SEED if seed is None else int(seed))
        if isinstance(value, str) and value.lower() == "imagenet":
            return cls("imagenet")
        path = Path(value).expanduser()
        if not (path.is_file() or hub.is_preset_folder(path)):
            raise WeightsUnavailableError(
                f'Weights file not found: {path}. The weights are "imagenet", none (a seeded random init), '
                "the path to an existing Keras weights file (.h5 / .weights.h5), or for a keras-hub backbone a "
                "local preset folder (with its config.json).",
                option="weights",
            )
        return cls("file", path=str(path.resolve()))

    def describe(self) -> str:
        if self.kind == "random":
            return f"none (random init, seed {self.seed})"
        if self.kind == "file":
            return f"file {self.path}"
        return "imagenet"

    @classmethod
    def recorded(cls, info) -> "WeightsSpec":
        """The weights an index records (its `index_info` row) as a WeightsSpec."""
        return cls(info.weights_kind, info.weights_seed, info.weights_path)


def no_text_tower(name: str, why: str = "") -> NoTextTowerError:
    """The error for words asked of `name`, which has no text tower (`why`: the reason, when it is not
    that the backbone embeds images only), naming backbones that have one."""
    able = ", ".join(sorted(n for n, s in REGISTRY.items() if s.text)[:4])
    return NoTextTowerError(
        f"Search by text needs a backbone with a text tower ({why or f'{name} embeds images only'}). Build an index "
        f"with one of: {able} (CLIP, SigLIP), and its weights; or, for the 1,000 ImageNet classes, query by ImageNet label.",
        option="text",
    )


@dataclass
class Backbone:
    """A built, frozen feature extractor and what identifies it.

    `precision` is how it computes ("float32" or "mixed"); the fingerprint does not depend
    on it (mixed precision keeps float32 weights), so an index compares the two apart.
    """

    spec: BackboneSpec
    weights: WeightsSpec
    model: Any
    fingerprint: str
    precision: str = DEFAULT_PRECISION
    text: Any = None  # hub.TextTower for a backbone that embeds prompts
    no_text_reason: str = ""

    def text_tower(self):
        """The text tower, or NoTextTowerError saying why there is none."""
        if self.text is None:
            raise no_text_tower(self.name, self.no_text_reason)
        return self.text

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size


def weights_fingerprint(model) -> str:
    """sha256 over every weight array, in order: equal iff the model computes the same function."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w.numpy() if hasattr(w, "numpy") else w))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_fingerprint(bb: Backbone, info, where: str | os.PathLike) -> None:
    """Refuse a built backbone whose weight values are not the ones that built the index `info` describes."""
    if info is not None and bb.fingerprint != info.weights_fingerprint:
        raise IndexMismatchError(
            f"The weights ({bb.weights.describe()}) are not the ones that built the index at "
            f"{where} ({WeightsSpec.recorded(info).describe()}); their values differ. "
            "Use the same weights, or build a new index in another folder."
        )


@contextlib.contextmanager
def keras_seeded(seed: int):
    """Run a block with Keras's random seed set, leaving the process's other RNGs as they were.

    `keras.utils.set_random_seed` also reseeds Python's and NumPy's global generators (and
    torch's on that backend), which would silently change a caller's own random stream;
    their states are saved and restored around the block. (TensorFlow's global op seed
    stays set: TF exposes no way to read it back, and vecsearch draws nothing from it.)
    """
    py_state, np_state = random.getstate(), np.random.get_state()  # before the first Keras import, which draws too
    keras = import_keras()
    torch_state = None
    if keras.backend.backend() == "torch":
        import torch

        torch_state = torch.random.get_rng_state()
    keras.utils.set_random_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        if torch_state is not None:
            import torch

            torch.random.set_rng_state(torch_state)


def with_top_file(spec: BackboneSpec) -> str:
    """The official with-top weights file's name (the registry records the no-top one)."""
    name = spec.weights_file.replace("_notop", "").replace("_no_top", "")
    return name or f"a with-top Keras weights file for {spec.name}"


def build_seeded_or_imagenet(spec: BackboneSpec, weights: WeightsSpec, include_top: bool):
    """The Keras model for a random-init or ImageNet WeightsSpec (files are the caller's).

    A failed download becomes one sentence that names the file to fetch by hand.
    """
    if weights.kind == "random":
        # Seeding here makes two indexes built with the same seed agree (tested); the same
        # seed and layer order also give a with-top model the same convolutional weights.
        assert weights.seed is not None, "a random init is always seeded (WeightsSpec.parse)"
        with keras_seeded(weights.seed):
            return spec.build(None, include_top)
    if weights.kind != "imagenet":
        raise ValueError(f"not a random or ImageNet weights spec: {weights}")
    if not spec.has_imagenet:
        raise WeightsUnavailableError(
            f"Backbone {spec.name!r} has no ImageNet weights; use weights none (a seeded random init) or a weights file.",
            option="weights",
        )
    try:
        # Keras reports its download on stdout; keep stdout for results (`--json`).
        with contextlib.redirect_stdout(sys.stderr):
            return spec.build("imagenet", include_top)
    except Exception as e:  # Keras raises a bare Exception on URL failure
        wanted = with_top_file(spec) if include_top else (spec.weights_file or "the no-top weights file")
        raise WeightsUnavailableError(
            f"Could not get ImageNet weights for {spec.name} ({short_error(e)}). Without network access, "
            f"download {wanted} on another machine and give that file as the weights "
            "(or put it in ~/.keras/models/)" + (", or use weights none for a random-init trial." if not include_top else "."),
            option="weights",
        ) from e


def _build(spec: BackboneSpec, weights: WeightsSpec):
    if weights.kind in ("random", "imagenet"):
        return build_seeded_or_imagenet(spec, weights, include_top=False)
    # A local file: a no-top file fits the pooled model; a with-top file needs the full
    # model, from which we cut the pooled output.
    try:
        return spec.build(weights.path, False)
    except Exception as first:
        try:
            full = spec.build(weights.path, True)
        except Exception:
            raise WeightsUnavailableError(
                f"Could not load weights file {weights.path} into {spec.name}: {short_error(first)}. "
                f"Expected a Keras weights file for {spec.name} (e.g. {spec.weights_file})."
            ) from first
        return pooled_submodel(full)


def pooled_submodel(full_model):
    """The pooled-feature model inside a with-top classifier (its global average pool)."""
    keras = import_keras()
    pool = next((layer for layer in full_model.layers if isinstance(layer, keras.layers.GlobalAveragePooling2D)), None)
    if pool is None:
        raise VecsearchError("This model has no global average pooling layer to take features from.")
    return keras.Model(full_model.inputs, pool.output)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise VecsearchError(f"Unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}.")
    return precision


def keras_uses_gpu() -> bool:
    """Whether Keras's backend computes on a GPU here (asks the backend that is loaded)."""
    keras = import_keras()
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return bool(tf.config.list_physical_devices("GPU"))
        if backend == "jax":
            import jax

            return jax.default_backend() == "gpu"
        if backend == "torch":
            import torch

            return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver means "no GPU", not a crash
        log.debug("could not ask %s for a GPU", backend, exc_info=True)
    return False


def mixed_policy_name() -> str:
    """Keras's mixed policy for this machine: float16 on a GPU (tensor cores), bfloat16 on a CPU
    (float16 has no fast CPU kernels, and bfloat16 keeps float32's range)."""
    return "mixed_float16" if keras_uses_gpu() else "mixed_bfloat16"


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Build models under `precision`'s Keras dtype policy, then put the previous policy back.

    Keras's policy is process state (`set_global_policy`) and its applications take no
    `dtype=`; a layer keeps the policy it was built with, so restoring afterwards leaves
    the model mixed and everything built later (heads, probes) float32.
    """
    check_precision(precision)
    if precision == "float32":
        yield
        return
    keras = import_keras()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(mixed_policy_name())
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


_LOAD_NOTICE: contextvars.ContextVar[Callable[[str], ContextManager] | None] = contextvars.ContextVar(
    "vecsearch_load_notice", default=None
)


@contextlib.contextmanager
def loading_notice(notice: Callable[[str], ContextManager]) -> Iterator[None]:
    """While inside, every model build runs inside `notice(text)`, text being e.g.
    "Loading resnet50 (ImageNet weights)...": how a front end shows a status line for the
    seconds to a minute a model takes to load (the library itself prints nothing)."""
    token = _LOAD_NOTICE.set(notice)
    try:
        yield
    finally:
        _LOAD_NOTICE.reset(token)


def model_loading(name: str, weights: WeightsSpec, what: str = "") -> ContextManager:
    """The block that builds a model, announced through `loading_notice` if a front end set one."""
    notice = _LOAD_NOTICE.get()
    if notice is None:
        return contextlib.nullcontext()
    source = {"random": f"random init, seed {weights.seed}", "imagenet": "ImageNet weights"}.get(
        weights.kind, f"weights {Path(weights.path or '').name}"
    )
    return notice(f"Loading {name}{what} ({source})\u2026")


def load_backbone(
    name: str = DEFAULT_BACKBONE, weights: WeightsSpec | Any = "imagenet", *, precision: str = DEFAULT_PRECISION
) -> Backbone:
    """Build a frozen backbone; raises UnknownBackboneError / WeightsUnavailableError.

    precision "mixed" computes in float16 (GPU) or bfloat16 (CPU); the model's output is
    cast to float32 by the caller (`Extractor.features`) before it is normalised.
    """
    spec = get_spec(name)
    check_precision(precision)
    if not isinstance(weights, WeightsSpec):
        weights = WeightsSpec.parse(weights)
    log.debug("building backbone %s with weights %s, precision %s", name, weights.describe(), precision)
    with model_loading(name, weights):
        with dtype_policy(precision):
            text, no_text_reason = None, ""
            if spec.hub:
                models = _build_hub(spec, weights)
                model, fingerprint = models.image, hub_fingerprint(models)
                text, no_text_reason = models.text, models.no_text_reason
            else:
                model = _build(spec, weights)
                fingerprint = weights_fingerprint(model)
        model.trainable = False
        out_dim = int(model.outputs[0].shape[-1])
        if out_dim != spec.dim:
            raise VecsearchError(f"Backbone {name} outputs {out_dim} features, registry says {spec.dim}.")
        return Backbone(spec, weights, model, fingerprint, precision, text, no_text_reason)


def _build_hub(spec: BackboneSpec, weights: WeightsSpec) -> hub.HubModels:
    """A keras-hub backbone's models, under the dtype policy in force (seeded for a random init)."""
    keras = import_keras()
    known = {p.name: p for p in hub.PRESETS}.get(spec.name)
    preset = hub.Preset(spec.name, spec.hub, spec.input_size[0], spec.dim, known.architecture if known else None)
    dtype = keras.mixed_precision.global_policy().name
    if weights.kind == "random":
        assert weights.seed is not None, "a random init is always seeded (WeightsSpec.parse)"
        with keras_seeded(weights.seed):
            models = hub.load(preset, "random", None, keras, dtype)
    else:
        with contextlib.redirect_stdout(sys.stderr):  # keras-hub reports downloads on stdout
            models = hub.load(preset, weights.kind, weights.path, keras, dtype)
    models.whole.trainable = False
    return models


def hub_fingerprint(models: hub.HubModels) -> str:
    """Both towers' weights and the image converter's scale, offset and size: what makes its vectors."""
    h = hashlib.sha256(weights_fingerprint(models.whole).encode())
    h.update(models.preprocessing.encode())
    return h.hexdigest()
