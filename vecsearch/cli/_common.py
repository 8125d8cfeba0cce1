"""What every CLI module shares: the Typer app, the consoles, common options, errors and progress.

Command modules import from here and register on `app`; nothing here imports them back.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.console import Console

from ..errors import VecsearchError, fault_message

app = typer.Typer(
    help="Index photo folders with a frozen ImageNet CNN and find images that look alike.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", help="Index folder (default: $VECSEARCH_INDEX, else ~/.local/share/vecsearch/index).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", metavar="float32|mixed", show_default=False,
    help="Compute precision: float32, or mixed (float16 on a GPU, bfloat16 on a CPU; vectors are stored as float32). "
         "Default: what the index records (float32 for a new one); the other one is accepted only if its vectors "
         "agree with a few stored ones (cosine >= 0.999).")]


# C0 and C1 control characters and the Unicode bidirectional overrides: a file name or a
# label holding them could move the cursor, recolour or rewrite the terminal, or fake lines.
# Lone surrogates (the undecodable bytes of a file name) could not be printed at all.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean(text: object) -> str:
    """`text` with every control character escaped (`\\x1b`, `\\n`), safe to print on a terminal."""
    def escape(m: re.Match) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _CONTROL.sub(escape, str(text))


def say(text: str = "") -> None:
    """One plain line on stdout: no markup, no highlighting, control characters escaped.

    Paths, labels, class names and reasons come from files and users; printed raw, an
    escape sequence in one would reach the terminal.
    """
    out.print(clean(text), highlight=False, markup=False)


def warn(text: str) -> None:
    """One plain line on stderr, as `say`."""
    err.print(clean(text), highlight=False, markup=False)


def error_line(message: str) -> None:
    """`Error: message` in red on stderr, the message escaped and never read as markup."""
    from rich.text import Text

    err.print(Text("Error:", style="red") + Text(" " + clean(message)), highlight=False)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Library errors, and faults of the disk, the database or the vector file, become one
    line on stderr that says what to do, and exit code 1; no traceback for any of them."""
    try:
        yield
    except VecsearchError as e:
        error_line(str(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("Interrupted; what was committed is kept, run the same command again to resume.")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - only the faults fault_message knows; others keep their traceback
        message = fault_message(e)
        if message is None:
            raise
        logging.getLogger("vecsearch.cli").debug("fault", exc_info=True)
        error_line(message)
        raise typer.Exit(1) from None




def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def open_index(index: Path | None, **kw):
    """`vecsearch.open_index`, imported on first use so `--help` stays instant."""
    from ..api import open_index as open_

    return open_(index, **kw)


def model_options(backbone: str | None, weights: str | None, seed: int | None) -> dict:
    """The `open_index` arguments for the model flags the user gave (none given: the index decides)."""
    return {k: v for k, v in (("backbone", backbone), ("weights", weights), ("seed", seed)) if v is not None}


@contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar with images/s, or None (no callback) under --quiet.

    The bar appears on the first update with work to show, so a run that fails while
    the model loads, or has nothing to do, leaves no empty bar behind; the rate counts
    from that first update, not from model start-up.
    """
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, console=err, transient=False)
    state: dict = {}

    def update(done: int, total: int) -> None:
        if not total:
            return
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(description, total=total, rate="")
            state["t0"] = time.perf_counter()
        dt = time.perf_counter() - state["t0"]
        rate = f"{done / dt:.1f} img/s" if done and dt > 0 else ""
        bar.update(state["task"], completed=done, total=total, rate=rate)

    try:
        yield update
    finally:
        if "task" in state:
            bar.stop()


class epoch_status:
    """A one-line status that shows the epoch and validation accuracy; nothing under --quiet."""

    def __init__(self, what: str, epochs: int, quiet: bool):
        self.what, self.epochs, self.quiet, self._status = what, epochs, quiet, None

    def __enter__(self):
        if self.quiet:
            return None
        self._status = err.status(f"{self.what}...")
        self._status.__enter__()

        def on_epoch(epoch: int, logs: dict) -> None:
            acc = logs.get("val_accuracy", logs.get("accuracy"))
            self._status.update(f"{self.what}: epoch {epoch}/{self.epochs}" + (f", accuracy {acc:.3f}" if acc is not None else ""))

        return on_epoch

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False


# -- where embedding runs (`index`, `embed`) ----------------------------------------------------
EngineOpt = Annotated[str, typer.Option(
    "--engine", metavar="local|ray",
    help="Where images are embedded: local (this process) or ray (a Ray cluster; pip install 'vecsearch[ray]').")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="ADDR", show_default=False,
    help="With --engine ray: the cluster to join (e.g. 10.0.0.5:6379, or auto); default: start a local Ray.")]
GpusPerWorkerOpt = Annotated[Optional[float], typer.Option(
    "--gpus-per-worker", min=0, show_default=False,
    help="With --engine ray: GPUs each model actor reserves (default 1 where the cluster has GPUs, else 0).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, show_default=False,
    help="With --engine ray: model actors (default one per GPU, else one per 8 CPUs); locally: decode threads.")]


def engine_options(engine: str, ray_address: str | None, gpus_per_worker: float | None, workers: int | None) -> dict:
    """The `open_index` arguments for the engine flags; the Ray flags need --engine ray."""
    if engine != "ray" and (ray_address is not None or gpus_per_worker is not None):
        raise VecsearchError("--ray-address and --gpus-per-worker go with --engine ray.")
    return {"engine": engine, "ray_address": ray_address, "gpus_per_worker": gpus_per_worker, "workers": workers}
