"""`vecsearch serve`: the HTTP service, so queries skip the model start-up of every CLI call."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import quote

import typer

from ..config import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS
from ..errors import VecsearchError
from ..extras import require_extra
from ._common import app, errors_to_exit, open_index
from .options import IndexOpt, RayAddressOpt
from .output import model_status, warn

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def read_token_file(path: Path, flag: str) -> str:
    """A token from a file (its first line, stripped): a secret never only on the command line."""
    try:
        token = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError) as e:
        raise VecsearchError(f"{flag} {path}: cannot read it ({e.__class__.__name__}: {e}).") from None
    if not token:
        raise VecsearchError(f"{flag} {path} is empty: put the token on its first line.")
    return token


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open in a browser: the page, with the token in it when there is one.

    A wildcard bind (0.0.0.0, ::) is shown as 127.0.0.1, which it also answers on.
    """
    try:
        if ipaddress.ip_address(host.strip("[]")).is_unspecified:
            host = "127.0.0.1"
    except ValueError:
        pass
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


@app.command()
def serve(
    index: IndexOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind. Anything but loopback needs --token (or --insecure).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(
            envvar="VECSEARCH_TOKEN",
            show_default=False,
            help="Require `Authorization: Bearer TOKEN` on the API; prefer the env var (a flag shows in `ps`).",
        ),
    ] = None,
    token_file: Annotated[
        Optional[Path],
        typer.Option(
            "--token-file",
            metavar="FILE",
            envvar="VECSEARCH_TOKEN_FILE",
            show_default=False,
            help="Read the read token from this file (first line); or set VECSEARCH_TOKEN_FILE (container secrets, systemd credentials).",
        ),
    ] = None,
    admin_token_file: Annotated[
        Optional[Path],
        typer.Option(
            "--admin-token-file",
            metavar="FILE",
            envvar="VECSEARCH_ADMIN_TOKEN_FILE",
            show_default=False,
            help="Read the admin (write) token from this file; or set VECSEARCH_ADMIN_TOKEN. Enables writes.",
        ),
    ] = None,
    allow_writes: Annotated[
        bool, typer.Option("--allow-writes", help="Take writes without an admin token (loopback --host only).")
    ] = False,
    allow_root: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--allow-root",
            metavar="DIR",
            show_default=False,
            help="A server-side folder writes may index by path (repeatable); others are refused with 403.",
        ),
    ] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without a token.")] = False,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Largest accepted upload, in MiB (larger: 413).")
    ] = MAX_UPLOAD_BYTES / 2**20,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            min=1,
            help="Largest image decoded, in pixels: uploads and thumbnails (decompression-bomb cap; a JPEG counts at the reduced scale a thumbnail decodes it at).",
        ),
    ] = MAX_UPLOAD_PIXELS,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")
    ] = "info",
    allow_host: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-host",
            metavar="NAME",
            show_default=False,
            help="Also answer requests for this host name (repeatable; e.g. the machine's name behind --host 0.0.0.0). Others get 400.",
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            min=0,
            show_default=False,
            help="Most images per model call shared by concurrent uploads (default: 8 on a CPU, the model's batch size on a GPU; 0: no batching).",
        ),
    ] = None,
    batch_delay_ms: Annotated[
        float,
        typer.Option(
            "--batch-delay-ms", min=0, help="How long the first waiting upload waits for others to join its model call."
        ),
    ] = 5.0,
    max_queue: Annotated[
        Optional[int],
        typer.Option(
            "--max-queue",
            min=1,
            show_default=False,
            help="Most requests waiting for the model (default: 4 batches' worth); more get 503 with Retry-After.",
        ),
    ] = None,
    request_timeout: Annotated[
        float,
        typer.Option(
            "--request-timeout", min=0, help="Seconds a request may wait for the model before it is dropped (503); 0: no limit."
        ),
    ] = 30.0,
    root_path: Annotated[
        str,
        typer.Option(
            "--root-path",
            metavar="PREFIX",
            help="The path prefix a reverse proxy serves this under (e.g. /vecsearch): links and the page work under it.",
        ),
    ] = "",
    cors_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            show_default=False,
            help="A web origin (https://app.example.com) whose pages may call the API from a browser (repeatable; none by default).",
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="Access log: one line per request on stderr, `text` or `json`.")
    ] = "text",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Write the access log.")] = True,
    metrics_public: Annotated[
        bool, typer.Option("--metrics-public", help="Serve /metrics without the token (e.g. to a scraper on a private network).")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar="local|ray",
            help='local: this process serves. ray: replicas on Ray Serve behind one address (the ray extra; README "Serve on Ray").',
        ),
    ] = "local",
    ray_address: RayAddressOpt = None,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --engine ray: reader replicas, each with its own model.")
    ] = 1,
    autoscale: Annotated[
        Optional[str],
        typer.Option(
            "--autoscale",
            metavar="MIN:MAX",
            show_default=False,
            help="With --engine ray: between MIN and MAX replicas, by load (instead of --replicas).",
        ),
    ] = None,
    gpus_per_replica: Annotated[
        float, typer.Option("--gpus-per-replica", min=0, help="With --engine ray: GPUs each replica reserves (0.5: two a GPU).")
    ] = 0.0,
    cpus_per_replica: Annotated[
        float, typer.Option("--cpus-per-replica", min=0, help="With --engine ray: CPUs each replica reserves.")
    ] = 1.0,
    threads_per_replica: Annotated[
        Optional[int],
        typer.Option(
            "--threads-per-replica",
            min=1,
            show_default=False,
            help="With --engine ray: model threads in each replica (default: a local Ray splits the cores among the replicas; a cluster: every core of the node).",
        ),
    ] = None,
    max_ongoing: Annotated[
        int,
        typer.Option(
            "--max-ongoing",
            min=1,
            help="With --engine ray: requests a replica works on at once (Ray Serve's max_ongoing_requests).",
        ),
    ] = 32,
    max_queued: Annotated[
        int,
        typer.Option(
            "--max-queued",
            min=1,
            help="With --engine ray: requests waiting for a replica (per proxy); more get 503 with Retry-After.",
        ),
    ] = 64,
) -> None:
    """Serve search, metadata, thumbnails and classification over HTTP, with a web page at /.

    The model, vectors and database load once at start-up. The API is documented at /docs.
    """
    with errors_to_exit():
        if log_level.lower() not in _LOG_LEVELS:
            raise VecsearchError(f"--log-level must be one of {', '.join(_LOG_LEVELS)}, not {log_level!r}.")
        if log_format not in ("text", "json"):
            raise VecsearchError(f"--log-format must be text or json, not {log_format!r}.")
        require_extra("server", needed_for="The server")
        from ..server.guards import is_loopback

        token = read_token_file(token_file, "--token-file") if token_file else token
        admin_token = read_token_file(admin_token_file, "--admin-token-file") if admin_token_file else None
        admin_token = admin_token or os.environ.get("VECSEARCH_ADMIN_TOKEN") or None
        if not is_loopback(host) and not (token or admin_token) and not insecure:
            raise VecsearchError(
                f"Refusing to serve on {host} without a token: anyone on the network could query your photos. "
                "Pass --token TOKEN (or set VECSEARCH_TOKEN), or --insecure if you mean it."
            )
        if engine not in ("local", "ray"):
            raise VecsearchError(f"--engine must be local or ray, not {engine!r}.")
        if engine != "ray" and (ray_address or autoscale or replicas != 1 or gpus_per_replica or threads_per_replica):
            raise VecsearchError(
                "--ray-address, --replicas, --autoscale, --gpus-per-replica and --threads-per-replica go with --engine ray."
            )
        settings = dict(
            token=token,
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_pixels=max_pixels,
            host=host,
            allow_hosts=tuple(allow_host or ()),
            admin_token=admin_token,
            allow_writes=allow_writes,
            allow_roots=tuple(str(r) for r in allow_root or ()),
            batch_size=batch_size,
            batch_delay_ms=batch_delay_ms,
            max_queue=max_queue,
            request_timeout=request_timeout or None,
            root_path=root_path,
            cors_origins=tuple(cors_origin or ()),
            log_format=log_format,
            metrics_public=metrics_public,
        )
        if engine == "ray":
            from ..server.ray_serve import Pool, parse_autoscale

            pool = Pool(
                replicas=replicas,
                autoscale=parse_autoscale(autoscale) if autoscale else None,
                gpus_per_replica=gpus_per_replica,
                cpus_per_replica=cpus_per_replica,
                max_ongoing=max_ongoing,
                max_queued=max_queued,
            )
            serve_on_ray(
                index,
                settings,
                pool,
                ray_address=ray_address,
                host=host,
                port=port,
                token=token,
                threads=threads_per_replica,
                access_log=access_log,
            )
            return
        import uvicorn

        from ..server import create_app

        if access_log:
            from ..server.observe import log_access_to_stderr

            log_access_to_stderr(log_format)

        ix = open_index(index, create=False)
        try:
            with model_status():  # the model loads here, once; not around the server's own threads
                web = create_app(ix, **settings)  # type: ignore[arg-type]
            url = page_url(host, port, token)
            warn(
                f"Serving {ix.directory} ({len(ix)} images, {ix.backbone.name}). Open {url} "
                f"-- API docs at /docs{' (the API needs the token as `Authorization: Bearer TOKEN`)' if token else ''}. "
                "Ctrl-C to stop."
            )
            # The app writes its own access log (route templates, request ids); uvicorn's would repeat it.
            uvicorn.run(web, host=host, port=port, log_level=log_level.lower(), access_log=False)
        finally:
            ix.close()


def serve_on_ray(
    index,
    settings: dict,
    pool,
    *,
    ray_address: str | None,
    host: str,
    port: int,
    token: str | None,
    threads: int | None,
    access_log: bool,
) -> None:
    """Deploy the replicas (this process only starts them and waits), then keep them up until Ctrl-C
    or SIGTERM, which take the application down (and a Ray started here with it)."""
    import signal
    import time

    from ..backbones import get_spec, plugin_module
    from ..server import ray_serve
    from ..server.guards import check_writes

    ix = open_index(index, create=False)  # the folder and what built it; the replicas build the model
    try:
        ix.store.require_info()
        plan = ray_serve.Plan(
            index=str(ix.directory.resolve()),
            app=settings,
            plugins=tuple(m for m in [plugin_module(get_spec(ix.info.backbone))] if m),
            writes=check_writes(host, settings["admin_token"], settings["allow_writes"]),
            threads=threads,
            access_log=access_log,
        )
        count, backbone = len(ix), ix.info.backbone
    finally:
        ix.close()
    how = f"{pool.autoscale[0]}-{pool.autoscale[1]} replicas" if pool.autoscale else f"{pool.replicas} replica(s)"
    warn(f"Starting {how} of {backbone} on Ray{' at ' + ray_address if ray_address else ' (a local cluster)'}...")
    ray_serve.deploy(plan, pool, address=ray_address, host=host, port=port)

    def stop(*_):
        # Once: a second signal (a supervisor's SIGTERM after a Ctrl-C) must not cut the shutdown short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        warn(
            f"Serving {plan.index} ({count} images, {backbone}) on Ray Serve, {how}"
            f"{', one writer' if plan.writes else ''}. Open {page_url(host, port, token)} -- API docs at /docs. "
            "Ctrl-C to stop."
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray_serve.stop()
        if not ray_address:
            import ray

            ray.shutdown()
