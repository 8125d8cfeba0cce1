"""`vecsearch serve --engine ray`: the in-process server's app on Ray Serve, in replicas behind Ray's proxy.

One Serve application of three deployments:

- `reader` (the ingress; N replicas, or autoscaled): each opens the index read-only from the
  folder every node sees, and builds the app exactly as `vecsearch serve` does (`create_app`:
  model, micro-batcher, guards, every route), following the commits of the writer and of any CLI
  run by the index generation, as the in-process server does. A write request is handed whole to
  the writer (`forwarding.ForwardWrites`), so readers never write.
- `writer` (one replica): the same app on the index opened for writing. It answers only forwarded
  writes, each under the index's writer lock as in-process: a CLI `vecsearch index` on the same
  folder still works beside it, and a write is durable before its 2xx.
- `metrics` (one replica, no CPU): every replica's latest scrape (pushed every `PUSH_SECONDS`), so
  `/metrics` at the one address covers them all, labelled `replica`.

Batching: each replica runs the service's micro-batcher (`batching.MicroBatcher`), not
`@serve.batch`. It is the code the in-process server runs and is tested with: it sizes calls by
the requests' deadlines, drops a request whose client left before its model call, and reports its
batch sizes; `@serve.batch` knows none of that. Ray Serve bounds what reaches a replica
(`max_ongoing_requests`) and what waits for one (`max_queued_requests`; past it a 503 with
Retry-After, Ray's own `BackpressureConfig`).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import VecsearchError
from ..extras import require_extra
from .forwarding import Answer, Forwarded, WriterUnavailable, answer

log = logging.getLogger(__name__)

APP_NAME = "vecsearch"
WRITER_CPUS = 0.5
"""CPUs the writer reserves: it embeds only what is added over HTTP."""
PUSH_SECONDS = 5.0
"""How often each replica sends its scrape to the `metrics` deployment (what /metrics may lag by)."""
STALE_SECONDS = 30.0
"""A replica not heard from for this long (gone) drops out of /metrics."""
RETRY_AFTER = 1
"""Seconds a client is told to wait when the cluster's queues are full."""
DEPLOY_TIMEOUT = 600.0
"""How long `deploy` waits for every replica to start (each builds its model) before giving up."""
REPLICA_HEADER = "X-Vecsearch-Replica"


@dataclass(frozen=True)
class Pool:
    """How many readers, and what each reserves on the cluster."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas instead of a fixed count
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_ongoing: int = 32  # requests a replica works on at once (its threads and its batcher's queue)
    max_queued: int = 64  # requests waiting for a replica, per proxy; more get 503

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise VecsearchError(f"replicas must be at least 1, got {self.replicas}.", option="replicas")
        if self.autoscale is not None:
            low, high = self.autoscale
            if low < 1 or high < low:
                raise VecsearchError(f"autoscale wants MIN:MAX with 1 <= MIN <= MAX, got {low}:{high}.", option="autoscale")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0:
            raise VecsearchError("A replica reserves 0 or more GPUs and CPUs.", option="gpus_per_replica")

    @property
    def least(self) -> int:
        """Replicas that must fit now (the autoscaler's minimum)."""
        return self.autoscale[0] if self.autoscale else self.replicas


@dataclass(frozen=True)
class Plan:
    """What every replica needs to build its app: small and picklable."""

    index: str  # absolute folder, the same path on every node
    app: dict[str, Any] = field(default_factory=dict)  # create_app's keywords
    plugins: tuple[str, ...] = ()  # modules that register a backbone that is not built in
    writes: bool = False
    threads: int | None = None  # model threads a replica; None: the backend's default (every core of its node)
    access_log: bool = True  # a line a request on the replica's stderr (Ray keeps it in the worker's log)


def parse_autoscale(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text or "")
    if not m:
        raise VecsearchError(f"autoscale is MIN:MAX replicas, e.g. 1:4; got {text!r}.", option="autoscale")
    return int(m.group(1)), int(m.group(2))


# -- what runs in the replicas -----------------------------------------------------------------
def _open(plan: Plan, *, read_only: bool):
    from ..ray_engine import share_gpu_memory

    for module in plan.plugins:
        importlib.import_module(module)
    if plan.threads:  # before the backend starts its thread pools (a replica has not imported it yet)
        for var, n in (
            ("TF_NUM_INTRAOP_THREADS", plan.threads),
            ("OMP_NUM_THREADS", plan.threads),
            ("TF_NUM_INTEROP_THREADS", 1),
        ):
            os.environ.setdefault(var, str(n))
    share_gpu_memory()  # replicas may share a GPU (--gpus-per-replica 0.5)
    if plan.access_log:
        from .observe import log_access_to_stderr

        log_access_to_stderr(plan.app.get("log_format", "text"))
    from ..opening import open_index

    return open_index(plan.index, create=False, read_only=read_only)


def _replica_name() -> str:
    from ray import serve

    ctx = serve.get_replica_context()
    return f"{ctx.deployment}-{ctx.replica_id.unique_id}"


def check_ready(service) -> None:
    """Raise unless the app finished starting and its index still reads (Ray restarts a replica that raises)."""
    if not service.ready:
        raise RuntimeError("the app has not finished starting")
    service.index.store.require_info()


class Pusher:
    """Sends this replica's scrape to the `metrics` deployment every PUSH_SECONDS, from a daemon thread."""

    def __init__(self, board, name: str, service):
        self.board, self.name, self.service = board, name, service
        self.stop = threading.Event()
        threading.Thread(target=self.run, name="vecsearch-metrics-push", daemon=True).start()

    def scrape(self) -> bytes:
        return self.service.metrics.exposition()[0] if self.service.metrics is not None else b""

    def run(self) -> None:
        while not self.stop.wait(PUSH_SECONDS):
            try:
                self.board.put.remote(self.name, self.scrape()).result(timeout_s=PUSH_SECONDS)
            except Exception as e:  # noqa: BLE001 - metrics must never take a replica down
                log.debug("metrics push failed: %s", e)


class Replica:
    """What the reader and the writer share: Ray's health check, and the metrics push stopped with them."""

    service: Any
    pusher: Pusher

    def check_health(self) -> None:
        check_ready(self.service)

    def __del__(self):
        pusher = getattr(self, "pusher", None)
        if pusher is not None:
            pusher.stop.set()


class Reader(Replica):
    """A replica of the ingress: the app on the index opened read-only, writes forwarded."""

    def __init__(self, plan: Plan, writer, board):
        self.plan, self.writer, self.board = plan, writer, board
        self.name = _replica_name()

    def __serve_build_asgi_app__(self):
        from . import create_app

        self.index = _open(self.plan, read_only=True)
        # Writes, and with them the server-side folders they may index (--allow-root), are the writer's:
        # a reader's node need not see those folders.
        settings = {**self.plan.app, "allow_roots": ()} if self.writer is not None else self.plan.app
        web = create_app(
            self.index,
            forward_writes=self.forward if self.writer is not None else None,
            gather_metrics=self.gather,
            **settings,
        )
        web.add_middleware(ServedBy, name=self.name)
        self.service = web.state.service
        self.pusher = Pusher(self.board, self.name, self.service)
        return web

    async def forward(self, request: Forwarded) -> Answer:
        return await call_writer(self.writer, request)

    def gather(self, own: bytes) -> bytes:
        """Every replica's scrape (this one's as of now), labelled by replica."""
        from .observe import merge_scrapes

        try:
            self.board.put.remote(self.name, own).result(timeout_s=5)
            scrapes = self.board.collect.remote().result(timeout_s=5)
        except Exception as e:  # noqa: BLE001 - the board restarting: this replica's own numbers
            log.warning("metrics from the other replicas are unavailable: %s", e)
            scrapes = {}
        return merge_scrapes({**scrapes, self.name: own})


async def call_writer(writer, request: Forwarded) -> Answer:
    """A forwarded write's answer, or WriterUnavailable (503 + Retry-After) when the writer cannot take it."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    try:
        return await writer.answer.remote(request)
    except BackPressureError:
        raise WriterUnavailable("Too many writes are waiting for the writer: retry shortly.", RETRY_AFTER) from None
    except DeploymentUnavailableError:
        raise WriterUnavailable("The writer is not running now (starting, or restarting): retry shortly.", 5) from None
    except RayActorError:
        raise WriterUnavailable(
            "The writer stopped while handling this write, which may or may not have been applied: retry it "
            "(the same upload again answers `duplicate` with its id; labels and removals are idempotent).",
            5,
        ) from None


class Writer(Replica):
    """The one replica that writes: the app on the index opened for writing, answering forwarded requests."""

    async def __init__(self, plan: Plan, board):  # type: ignore[misc]  # Ray Serve awaits an async constructor
        from . import create_app

        self.index = _open(plan, read_only=False)
        self.web = create_app(self.index, **plan.app)
        self.service = self.web.state.service
        self.life = self.web.router.lifespan_context(self.web)
        await self.life.__aenter__()  # the app's start-up, as a server runs it: its batcher, then ready
        self.name = _replica_name()
        self.pusher = Pusher(board, self.name, self.service)

    async def answer(self, request: Forwarded) -> Answer:
        return await answer(self.web, request)


class Board:
    """The latest scrape of every replica (gone ones drop out after STALE_SECONDS)."""

    def __init__(self):
        self.scrapes: dict[str, tuple[float, bytes]] = {}

    def put(self, name: str, scrape: bytes) -> None:
        self.scrapes[name] = (time.monotonic(), scrape)

    def collect(self) -> dict[str, bytes]:
        now = time.monotonic()
        self.scrapes = {k: v for k, v in self.scrapes.items() if now - v[0] < STALE_SECONDS}
        return {k: v[1] for k, v in self.scrapes.items()}


class ServedBy:
    """ASGI middleware: which replica answered, in a response header (for operators, and the tests)."""

    def __init__(self, app, name: str):
        self.app, self.header = app, (REPLICA_HEADER.lower().encode(), name.encode("ascii", "replace"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*(message.get("headers") or ()), self.header])
            await send(message)

        await self.app(scope, receive, tagged)


# -- the driver side ----------------------------------------------------------------------------
def application(plan: Plan, pool: Pool):
    """The Serve application (bound deployments) for a plan and a pool."""
    from ray import serve
    from ray.serve.config import BackpressureConfig

    backpressure = BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER)
    board = serve.deployment(name="metrics", num_replicas=1, ray_actor_options={"num_cpus": 0})(Board).bind()
    writer = None
    if plan.writes:
        writer = serve.deployment(
            name="writer",
            num_replicas=1,
            max_ongoing_requests=pool.max_ongoing,
            max_queued_requests=pool.max_queued,
            backpressure_config=backpressure,
            health_check_period_s=5,
            ray_actor_options={"num_cpus": WRITER_CPUS},
        )(Writer).bind(plan, board)
    scaling: dict[str, Any] = {"num_replicas": pool.replicas}
    if pool.autoscale:
        low, high = pool.autoscale
        # Enough ongoing requests a replica to fill its model calls before another one starts.
        target = max(2, int(plan.app.get("batch_size") or 8))
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target}}
    reader = serve.deployment(
        name="reader",
        max_ongoing_requests=pool.max_ongoing,
        max_queued_requests=pool.max_queued,
        backpressure_config=backpressure,
        health_check_period_s=5,
        ray_actor_options={"num_cpus": pool.cpus_per_replica, "num_gpus": pool.gpus_per_replica},
        **scaling,
    )(serve.ingress()(Reader))
    return reader.bind(plan, writer, board)


def check_pool(resources: dict[str, float], plan: Plan, pool: Pool) -> None:
    """Refuse a pool the cluster cannot hold now (Ray would wait for it without end)."""
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    n = pool.least
    if pool.gpus_per_replica and n * pool.gpus_per_replica > gpus:
        raise VecsearchError(
            f"{n} replicas with {pool.gpus_per_replica:g} GPU each need {n * pool.gpus_per_replica:g} GPUs; the Ray "
            f"cluster has {gpus:g}. Use fewer replicas, a fraction of a GPU each (0.5: two a GPU), or 0 (on CPUs).",
            option="gpus_per_replica",
        )
    need = n * pool.cpus_per_replica + (WRITER_CPUS if plan.writes else 0)
    if need > cpus:
        raise VecsearchError(
            f"{n} replicas with {pool.cpus_per_replica:g} CPU each{' and the writer' if plan.writes else ''} need "
            f"{need:g} CPUs; the Ray cluster has {cpus:g}. Use fewer replicas or fewer CPUs each.",
            option="replicas",
        )


def local_cpus(plan: Plan, pool: Pool) -> int:
    """Logical CPUs for a Ray started here: the machine's, or what the asked-for pool reserves if more
    (two replicas on a two-core machine share its cores, as two processes would)."""
    high = pool.autoscale[1] if pool.autoscale else pool.replicas
    need = high * pool.cpus_per_replica + (WRITER_CPUS if plan.writes else 0)
    return max(os.cpu_count() or 1, math.ceil(need))


def local_threads(pool: Pool) -> int | None:
    """Model threads per replica on a Ray started here: the machine's cores split among the replicas
    (measured on 2 cores: 2 replicas with a core each 1.14x the uploads/s of 1 replica, with both
    cores each 1.00x, as their thread pools contend); one replica, or autoscaled: the backend's default."""
    if pool.autoscale or pool.replicas < 2:
        return None
    return max(1, (os.cpu_count() or 1) // pool.replicas)


def deploy(plan: Plan, pool: Pool, *, address: str | None, host: str, port: int) -> None:
    """Start (or join) Ray, start Serve's proxy on host:port, and run the application until every
    replica is up; a failure to start is a VecsearchError with the replicas' own reason."""
    require_extra("ray", ("ray", "ray.serve"), needed_for="Serving on Ray")
    from ..ray_engine import connect

    if plan.threads is None and not address:
        plan = dataclasses.replace(plan, threads=local_threads(pool))

    ray = connect(address, num_cpus=None if address else local_cpus(plan, pool))
    check_pool(ray.cluster_resources(), plan, pool)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    failure: list[BaseException] = []

    def run() -> None:
        try:
            serve.run(application(plan, pool), name=APP_NAME, route_prefix="/", blocking=False)
        except BaseException as e:  # noqa: BLE001 - reported by the waiting thread
            failure.append(e)

    runner = threading.Thread(target=run, name="vecsearch-serve-run", daemon=True)
    runner.start()
    runner.join(DEPLOY_TIMEOUT)
    if failure:
        reason = replica_reason(deployment_messages() or str(failure[0]))
        stop()
        raise VecsearchError(f"The replicas could not start: {reason}")
    if runner.is_alive():
        stop()
        raise VecsearchError(
            f"The replicas did not start within {DEPLOY_TIMEOUT:g} s (the cluster may lack the resources they "
            "reserve, or a node cannot see the index folder)."
        )


def deployment_messages() -> str:
    """What Serve says of each deployment of the application (a failed replica's traceback among it)."""
    from ray import serve

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return ""
    return "\n".join(d.message for d in (app.deployments.values() if app else ()) if d.message)


def replica_reason(message: str) -> str:
    """The replicas' own error from Serve's deploy failure (its last `SomethingError: text` line)."""
    found = re.findall(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$", message, flags=re.M)
    return found[-1][1].strip() if found else message.strip().splitlines()[-1] if message.strip() else "unknown"


STOP_SECONDS = 30.0
"""How long `stop` waits for the replicas to finish their requests and go."""


def stop() -> None:
    """Take the application down (Serve and the cluster stay): in-flight requests finish, for at most
    STOP_SECONDS; past that the caller goes on (a Ray it started is shut down with everything in it)."""
    from ray import serve

    def delete() -> None:
        try:
            serve.delete(APP_NAME)
        except Exception as e:  # noqa: BLE001 - stopping after a failure: say it, do not mask the failure
            log.warning("could not delete the Serve application: %s", e)

    deleting = threading.Thread(target=delete, name="vecsearch-serve-delete", daemon=True)
    deleting.start()
    deleting.join(STOP_SECONDS)
    if deleting.is_alive():
        log.warning("the Serve application did not stop within %g s", STOP_SECONDS)
