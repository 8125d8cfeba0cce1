"""The Ray engine: embedding on a Ray cluster, with the same contract as `extract.Extractor`.

`RayEngine.embed_files(paths)` yields one `extract.Embedded` per path, so the indexer's
planning, chunked commits and crash safety stay as they are; only the embedding moves.
On the cluster, files are read and decoded by path in CPU tasks (`images.read_image_file`,
exactly as the in-process engine does), and the model runs in a pool of actors, each of
which builds the backbone once from a `ModelRecipe` (one per GPU where there are GPUs).
Results stream back to the driver in blocks (`iter_batches`), so memory stays bounded.
Workers open the files by path: every node must see the folders at the same paths.

For a benchmark (scripts/bench_extract.py --engine ray), embed N paths with K actors and
get images/s::

    from vecsearch.ray_engine import ModelRecipe, benchmark
    recipe = ModelRecipe.for_model("resnet50", "imagenet", batch_size=64)
    result = benchmark(paths, recipe, workers=K)  # address=None starts a local Ray
    result["images_per_second"], result["seconds"], result["failed"]

`seconds` counts from the request to the last result: Ray's start-up (the first call in a
process) and each run's actor start and model build (~5 s) are in it, so give it enough
images that they do not dominate, or time two sizes and take the difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .backbones import Backbone, WeightsSpec, check_precision, get_spec, load_backbone, plugin_module
from .config import default_batch_size
from .errors import IndexMismatchError, RayClusterError, VecsearchError
from .extract import RESAMPLE, Embedded
from .extras import require_extra

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
DECODE_BATCH = 32
"""Files per decode task: big enough to amortise a task's overhead, small enough to stream."""
DECODE_CPUS = 0.5
"""CPUs a decode task reserves: it waits on the (shared) filesystem part of the time. Being
unlike the actors' reservation also keeps Ray Data from fusing decoding into the model actors."""
CPUS_PER_CPU_WORKER = 8
"""Without GPUs, one model actor per this many cluster CPUs (a model call uses several cores itself)."""
ACTOR_CPUS = 1
"""CPUs a model actor reserves (its model call may use more)."""
WINDOW = 1 << 20
"""Files per Ray Data run: the listing held at once; each run starts the actor pool anew (~5 s)."""


def check_engine(engine: str) -> str:
    """`engine` if known (and, for ray, installed: said up front, before any work), else VecsearchError."""
    if engine not in ENGINES:
        raise VecsearchError(f"Unknown engine {engine!r}: use local (in this process) or ray (a Ray cluster).")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        import_ray()
    return engine


def import_ray():
    """`ray` and `ray.data`, or a VecsearchError that says how to install them."""
    require_extra("ray", ("ray", "ray.data"), needed_for="The Ray engine")
    import ray

    return ray


@dataclass(frozen=True)
class ModelRecipe:
    """Everything a worker needs to build the same model as the driver: small and picklable.

    `plugin` names the module that registered the backbone when it is not built in (a
    plugin's `register()`); workers import it first, so it must be importable there.
    `fingerprint`, when known (an existing index), is checked after the build, so a
    worker with another weights file refuses to embed instead of mixing models.
    """

    backbone: str
    weights: WeightsSpec
    batch_size: int
    precision: str = "float32"  # backbones.PRECISIONS: how the actors' models compute
    plugin: str = ""
    fingerprint: str | None = None

    @classmethod
    def for_model(
        cls,
        backbone: str,
        weights: Any = "imagenet",
        *,
        seed: int | None = None,
        batch_size: int | None = None,
        fingerprint: str | None = None,
        precision: str = "float32",
    ) -> "ModelRecipe":
        spec = get_spec(backbone)
        if not isinstance(weights, WeightsSpec):
            weights = WeightsSpec.parse(weights, seed)
        return cls(
            backbone,
            weights,
            max(1, batch_size or default_batch_size(precision)),
            precision=check_precision(precision),
            plugin=plugin_module(spec),
            fingerprint=fingerprint,
        )

    def build(self) -> Backbone:
        if self.plugin:
            importlib.import_module(self.plugin)
        bb = load_backbone(self.backbone, self.weights, precision=self.precision)
        if self.fingerprint is not None and bb.fingerprint != self.fingerprint:
            raise IndexMismatchError(
                f"On this Ray worker the weights ({self.weights.describe()}) are not the ones the index records "
                f"(fingerprint {self.fingerprint[:12]}...); their values differ. Give every node the same weights file."
            )
        return bb


# -- what runs on the cluster ----------------------------------------------------------------
def _decode(batch: dict[str, np.ndarray], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A CPU task: read, hash and decode a batch of files; a bad one gets its reason and black pixels."""
    from . import images
    from .errors import BadImageError

    w, h = size
    paths = [str(p) for p in batch["path"]]
    n = len(paths)
    pixels = np.zeros((n, h, w, 3), np.uint8)
    width, height = np.zeros(n, np.int64), np.zeros(n, np.int64)
    sha, error = [""] * n, [""] * n
    for j, p in enumerate(paths):
        try:
            img = images.read_image_file(Path(p), size, resample=RESAMPLE)
        except BadImageError as e:
            error[j] = e.reason
            continue
        except Exception as e:  # noqa: BLE001 - a decoder bug must not stop a 100M-image job
            error[j] = f"unreadable: {type(e).__name__}: {e}"
            continue
        pixels[j], width[j], height[j], sha[j] = img.pixels, img.width, img.height, img.sha256
    return {
        "path": np.array(paths, dtype=object),
        "pixels": pixels,
        "width": width,
        "height": height,
        "sha256": np.array(sha, dtype=object),
        "error": np.array(error, dtype=object),
    }


def share_gpu_memory() -> None:
    """In a process that may share its GPU with others (Ray actors, Serve replicas): take GPU memory as
    needed, not all of it up front (TensorFlow's and JAX's default). Before the backend loads."""
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


class _EmbedActor:
    """One model per actor, built once; turns decoded batches into unit vectors and norms."""

    def __init__(self, recipe: ModelRecipe):
        from .extract import Extractor

        share_gpu_memory()  # actors may share a GPU (--gpus-per-worker 0.5)
        self.extractor = Extractor(recipe.build(), recipe.batch_size, workers=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .vectors import normalize, norms

        ok = np.array([not e for e in batch["error"]], bool)
        n, dim = len(ok), self.extractor.backbone.dim
        vectors, lengths = np.zeros((n, dim), np.float32), np.zeros(n, np.float32)
        if ok.any():
            raw = self.extractor.features(np.asarray(batch["pixels"])[ok])
            vectors[ok], lengths[ok] = normalize(raw), norms(raw)
        out = {k: batch[k] for k in ("path", "width", "height", "sha256", "error")}
        return out | {"vector": vectors, "norm": lengths}


# -- the driver side ---------------------------------------------------------------------------
PROBE_SECONDS = 5.0
"""How long `connect` waits for a head to answer before saying that nothing does. ray.init
retries 20 times: where nothing listens a try took ~40 s here (so ~13 min), where the head
refuses the token ~1 s; each try prints a warning from Ray's C++ core that no ray.init option
(logging_level, log_to_driver, configure_logging) silences."""
LOOPBACK = ("localhost", "127.0.0.1", "::1")
AUTH_DOCS = "https://docs.ray.io/en/latest/ray-security/token-auth.html"


def connect(address: str | None = None, *, num_cpus: int | None = None):
    """Join the Ray cluster at `address`, or start a local one (of `num_cpus` logical CPUs; default the
    machine's); reuse a connection this process has."""
    ray = import_ray()
    if not ray.is_initialized():
        # None and "auto" find a cluster started here, and Ray then picks up its token by itself.
        if address not in (None, "auto", "local") and "://" not in address:
            _check_head(address)
        log.info("connecting to Ray at %s", address or "a new local cluster")
        try:
            local = {"num_cpus": num_cpus} if num_cpus and address in (None, "local") else {}
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False, **local)
        except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as e:
            if _refused_token(e):
                raise RayClusterError(_auth_advice(address)) from e
            raise RayClusterError(
                f"Cannot reach a Ray cluster at {address}: {e}. Start one with `ray start --head` "
                "or give no address to run a local one.",
                option="ray_address",
            ) from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws its own
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    if hasattr(ctx, "raise_original_map_exception"):
        ctx.raise_original_map_exception = True  # our own errors, not a wrapped RayTaskError
    return ray


def _check_head(address: str) -> None:
    """Ask the head once, within PROBE_SECONDS, what ray.init would learn slowly and noisily.

    A head that wants a token this process does not send, or nothing answering where Ray
    dials (a loopback host becomes this machine's address), is a RayClusterError saying what
    to do; any other answer is left to ray.init.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # ray.init says what is wrong with the address
    dialled = address
    if host.strip("[]") in LOOPBACK:
        from ray.util import get_node_ip_address

        ip = get_node_ip_address()
        dialled = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    token = _token()[0] if _token_mode() else None
    answer = _ask_head(dialled, token)
    if answer == "refused":
        raise RayClusterError(_auth_advice(address))
    if answer != "silent":
        return
    rewritten = f" (Ray dials {dialled}: it replaces a loopback address by this machine's)" if dialled != address else ""
    if rewritten and _ask_head(address, token) != "silent":
        raise RayClusterError(
            f"Nothing answers at {dialled}, where Ray dials for {address} (it replaces a loopback address by this "
            f"machine's), but {address} does: the head listens on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). "
            "Set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 here too, or start the head without it.",
            option="ray_address",
        )
    raise RayClusterError(
        f"Nothing answers at {address}{rewritten}: no Ray head runs there, or a firewall "
        f"is in between. Start one there (`ray start --head`, on port {port}), or give no address to run a local one.",
        option="ray_address",
    )


def _ask_head(target: str, token: str | None) -> str:
    """ "ok", "refused" (wants a token, or another), "silent" (nothing answers) or "other", from one GCS call.

    GetClusterId is the first call ray.init makes, and needs nothing but the token.
    """
    try:
        import grpc
    except ImportError:  # ray without its gRPC extras: ray.init will tell
        return "other"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])  # as Ray's own channels
    try:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")  # bytes in, bytes out
        call(b"", timeout=PROBE_SECONDS, metadata=[("authorization", f"Bearer {token}")] if token else None)
        return "ok"
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return "refused"
        return "silent" if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) else "other"
    finally:
        channel.close()


def _token_mode() -> bool:
    """Whether Ray sends a token: only with RAY_AUTH_MODE=token when given an address."""
    return os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token"


def _token() -> tuple[str | None, str]:
    """(the token Ray sends with RAY_AUTH_MODE=token, where it is read), in the order of Ray's docs."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return Path(path).read_text().strip() or None, path
    except OSError:
        return None, path


def _auth_advice(address: str | None) -> str:
    """What to set for a head that wants a token: the mode, or the token itself, and where Ray reads it."""
    token, source = _token()
    where = "RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token"
    get = "`ray get-auth-token` on the head prints it"
    if not _token_mode():
        have = f"this machine has one in {source}" if token else f"this machine has none: {get}"
        return (
            f"The Ray cluster at {address} requires an auth token, which Ray sends only with RAY_AUTH_MODE=token "
            "(`ray start --head` turns token auth on where ~/.ray/auth_token exists). Set RAY_AUTH_MODE=token, "
            f"with the head's token in {where} ({have}). See {AUTH_DOCS}"
        )
    if token is None:
        return f"RAY_AUTH_MODE=token is set, but {source} holds no token: put the head's ({get}) in {where}."
    return f"The Ray cluster at {address} refused the auth token from {source}: put the head's ({get}) in {where}."


def _refused_token(e: BaseException | None) -> bool:
    """Whether a failed ray.init, or what caused it, is Ray's refusal of the token."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class RayEngine:
    """Embeds files on a Ray cluster; `embed_files` keeps `Extractor.embed_files`'s contract.

    `workers` model actors (default: one per GPU, else one per 8 CPUs), each reserving
    `gpus_per_worker` GPUs (default 1 where the cluster has GPUs, else 0).
    Results come back in completion order (the indexer keys them by path), or in input
    order with `ordered` (what `embed --out` wants, to finish shards one after another);
    either way each path exactly once.
    """

    def __init__(
        self,
        recipe: ModelRecipe,
        *,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float | None = None,
        ordered: bool = False,
    ):
        if workers is not None and workers < 1:
            raise VecsearchError(f"workers must be at least 1, got {workers}.", option="workers")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise VecsearchError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker}.", option="gpus_per_worker")
        self.recipe, self.address = recipe, address
        self.workers, self.gpus_per_worker = workers, gpus_per_worker
        self.ordered = ordered

    def _pool(self, ray) -> tuple[int, float]:
        """(actors, GPUs per actor) for this cluster; a pool it cannot hold is refused, not left to wait."""
        resources = ray.cluster_resources()
        gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
        per = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if self.workers is not None:
            actors = self.workers
        elif per and gpus:
            actors = max(1, int(gpus // per))
        else:
            actors = max(1, int(cpus // CPUS_PER_CPU_WORKER))
        if per and actors * per > gpus:
            raise VecsearchError(
                f"{actors} model actors with {per:g} GPU each need {actors * per:g} GPUs; the Ray "
                f"cluster has {gpus:g}. Lower workers or gpus_per_worker (0: on CPUs).",
                option="workers",
            )
        if actors * ACTOR_CPUS + DECODE_CPUS > cpus:
            raise VecsearchError(
                f"{actors} model actors take {actors * ACTOR_CPUS:g} CPUs and decoding needs "
                f"{DECODE_CPUS:g} more; the Ray cluster has {cpus:g}. Lower workers.",
                option="workers",
            )
        return actors, per

    def embed_files(self, paths: Iterable[Path]) -> Iterator[Embedded]:
        """Yield one `Embedded` per path (completion order unless `ordered`); a bad file yields its reason.

        Paths are taken from the iterable a window at a time (`WINDOW`), one Ray Data run
        each, so neither the driver nor the object store ever holds a 100M-file listing.
        """
        it = iter(paths)
        ray = None
        while True:
            window = {str(p): Path(p) for p in itertools.islice(it, WINDOW)}
            if not window:
                return
            ray = ray or connect(self.address)
            yield from self._run(ray, window)

    def _run(self, ray, originals: dict[str, Path]) -> Iterator[Embedded]:
        """One Ray Data run over a window of files: decode tasks -> model actors -> back here."""
        actors, gpus = self._pool(ray)
        size = get_spec(self.recipe.backbone).input_size
        names = list(originals)
        blocks = max(1, min(len(names) // DECODE_BATCH + 1, 4096))
        ds = ray.data.from_items([{"path": p} for p in names], override_num_blocks=blocks)
        if self.ordered:
            (ds.context if hasattr(ds, "context") else ray.data.DataContext.get_current()).execution_options.preserve_order = True
        ds = ds.map_batches(
            _decode, fn_kwargs={"size": tuple(size)}, batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=DECODE_CPUS
        )
        ds = ds.map_batches(
            _EmbedActor,
            fn_constructor_args=(self.recipe,),
            batch_size=self.recipe.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus or None,
            num_cpus=ACTOR_CPUS,
        )
        log.info("embedding %d files on Ray with %d model actor(s), %s GPU each", len(names), actors, gpus)
        pending = set(names)
        for batch in _batches(ds):
            for j, p in enumerate(batch["path"]):
                p = str(p)
                if p not in pending:
                    continue  # a retried block may repeat a row: every path comes back once
                pending.discard(p)
                err = str(batch["error"][j])
                if err:
                    yield Embedded(originals[p], error=err)
                else:
                    yield Embedded(
                        originals[p],
                        vector=np.asarray(batch["vector"][j], np.float32),
                        norm=float(batch["norm"][j]),
                        width=int(batch["width"][j]),
                        height=int(batch["height"][j]),
                        sha256=str(batch["sha256"][j]),
                    )
        if pending:
            raise VecsearchError(
                f"The Ray job returned no result for {len(pending)} of {len(names)} files "
                f"(e.g. {next(iter(pending))}); run again to embed them."
            )


def _batches(ds) -> Iterator[dict[str, np.ndarray]]:
    """The dataset's output blocks as they finish; a failure on the cluster becomes one VecsearchError line."""
    it = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except VecsearchError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray wraps what failed on a worker (actor start-up, a model call)
            cause = getattr(e, "cause", None)
            if isinstance(cause, VecsearchError):
                raise cause from None
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise VecsearchError(
                f"The Ray job failed: {lines[-1] if lines else type(e).__name__} "
                "(the workers' logs are under /tmp/ray/session_latest/logs on each node)."
            ) from e
        yield batch


def benchmark(
    paths: Iterable[str | Path],
    recipe: ModelRecipe,
    *,
    workers: int | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> dict:
    """Embed `paths` with the Ray engine and time it: images, failed, seconds, images_per_second, workers."""
    files = [Path(p) for p in paths]
    engine = RayEngine(recipe, address=address, workers=workers, gpus_per_worker=gpus_per_worker)
    t0 = time.perf_counter()
    failed = sum(1 for item in engine.embed_files(files) if item.error is not None)
    seconds = time.perf_counter() - t0
    ray = import_ray()
    return {
        "images": len(files),
        "failed": failed,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(files) / seconds, 2) if seconds > 0 else None,
        "workers": engine._pool(ray)[0],
    }


__all__ = ["ENGINES", "ModelRecipe", "RayEngine", "benchmark", "check_engine", "connect", "import_ray"]
