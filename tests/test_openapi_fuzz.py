"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis) over real loopback HTTP:
no 5xx for anything a client can send, and no status the schema does not declare.

`VECSEARCH_FUZZ_EXAMPLES` sets the examples per operation: CI runs 200; the default keeps
the suite quick. Generation is derandomized, so a run is repeatable.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")

from helpers import live_server  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("VECSEARCH_FUZZ_EXAMPLES", "15"))


def fuzz(op, base_url: str) -> None:
    """EXAMPLES generated requests of one operation against the server at `base_url`: no 5xx, and every
    status, content type and body as its OpenAPI entry declares."""

    @given(case=op.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(
            base_url=base_url,
            timeout=60,
            checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
        )

    run()


@pytest.fixture(scope="module")
def live(labelled_served_index, tmp_path_factory):
    """A copy of conftest's labelled_served_index (taught labels, a k-NN classifier, a bad file) served
    over loopback HTTP with writes on (the fuzzer adds, removes and labels: the shared index stays as it was)."""
    import shutil

    from vecsearch import open_index
    from vecsearch.server import create_app

    root, _ = labelled_served_index
    copy = tmp_path_factory.mktemp("fuzzed")
    shutil.copytree(root / "index", copy / "index")
    (copy / "allowed").mkdir()
    with (
        open_index(copy / "index") as ix,
        live_server(create_app(ix, warm=False, allow_writes=True, allow_roots=[copy / "allowed"])) as base,
    ):
        yield base


def test_no_server_error_and_no_undocumented_status(live):
    # Driven through Hypothesis directly: schemathesis's pytest plugin does not run on pytest 9.
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    every = [result.ok() for result in schema.get_all_operations()]
    # The /api aliases of /api/v1 run the same handlers: fuzzing the v1 operations covers them.
    operations = [op for op in every if op.path.startswith("/api/v1/") or not op.path.startswith("/api/")]
    aliases = [op for op in every if op not in operations]
    # Every route, the explain ones, the original, the writes, /ready and /metrics (outside /api: no alias) included.
    assert len(operations) == 24 and len(aliases) == 23
    assert all(op.definition.raw.get("deprecated") for op in aliases)
    for op in operations:
        fuzz(op, live)


@pytest.fixture(scope="module")
def live_reader(labelled_served_index, tmp_path_factory):
    """A reader app (the index opened read-only) whose writes are forwarded to a writer app on the same
    copy, as each Ray Serve replica does (`serve --engine ray`), served over loopback HTTP."""
    import asyncio
    import shutil
    import threading

    from vecsearch import open_index
    from vecsearch.server import create_app
    from vecsearch.server.forwarding import answer

    root, _ = labelled_served_index
    copy = tmp_path_factory.mktemp("fuzzed-forwarded")
    shutil.copytree(root / "index", copy / "index")
    (copy / "allowed").mkdir()
    settings_ = dict(warm=False, allow_writes=True, allow_roots=[copy / "allowed"], batch_size=0)
    loop = asyncio.new_event_loop()  # the writer's own loop: another process on Ray
    threading.Thread(target=loop.run_forever, daemon=True).start()
    with open_index(copy / "index") as writer_ix, open_index(copy / "index", read_only=True) as reader_ix:
        writer = create_app(writer_ix, **settings_)

        forwarded = []

        async def forward(request):
            forwarded.append(request["method"])
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(answer(writer, request), loop))

        with live_server(writer), live_server(create_app(reader_ix, forward_writes=forward, **settings_)) as base:
            yield base, forwarded
    loop.call_soon_threadsafe(loop.stop)


def test_forwarded_writes_have_no_server_error_and_no_undocumented_status(live_reader):
    """The write routes through a reader that forwards them: the writer's answers, within the same schema."""
    live_reader, forwarded = live_reader
    schema = schemathesis.openapi.from_url(f"{live_reader}/openapi.json")
    writes = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.path.startswith("/api/v1/") and "write" in (op.definition.raw.get("tags") or [])
    ]
    assert len(writes) == 6, [f"{op.method} {op.path}" for op in writes]
    for op in writes:
        fuzz(op, live_reader)
    assert {"POST", "PUT", "DELETE"} <= set(forwarded)  # the writer answered them, not the read-only reader
