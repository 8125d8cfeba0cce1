"""What every CLI module shares: the Typer app, the consoles, common options, errors and progress.

Command modules import from here and register on `app`; nothing here imports them back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterable, Iterator, Optional, Sequence

import typer
from rich.console import Console

from ..errors import VecsearchError, fault_message


def _bare_flags(params: list) -> list:
    """Flags (`--json`, `--help`, `-v`) with an empty metavar: Typer's rich help prints a type
    (`<bool>`, `<int>`) for every option, though a flag takes no value."""
    for p in params:
        if getattr(p, "metavar", "") is None and (getattr(p, "is_flag", False) or getattr(p, "count", False)):
            p.metavar = ""
    return params


class BareFlagsCommand(typer.core.TyperCommand):
    def get_params(self, ctx):
        return _bare_flags(super().get_params(ctx))


class BareFlagsGroup(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _bare_flags(super().get_params(ctx))


class App(typer.Typer):
    """`typer.Typer` whose commands show flags without a type in `--help` (`BareFlagsCommand`)."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", BareFlagsCommand)
        return super().command(*args, **kwargs)


app = App(
    cls=BareFlagsGroup,
    help="Index photo folders with a frozen ImageNet CNN and find images that look alike.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


class StdoutClosed(Exception):
    """The reader of stdout went away (`vecsearch list | head -1`): the command ends quietly."""


class OutConsole(Console):
    """The stdout console: a closed pipe raises StdoutClosed (rich's own default exits with 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise StdoutClosed()


class ErrConsole(Console):
    """The stderr console: when stderr is a closed pipe, messages and progress are dropped and the work goes on."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _point_at_devnull(2)


def _point_at_devnull(fd: int) -> None:
    """Make `fd` write to /dev/null, so Python's flush of its buffer at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def _has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError elsewhere is a real fault)."""
    if not _has_fd(sys.stdout):
        return False
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def stdout_write(text: str) -> None:
    """Write to stdout; a closed pipe becomes StdoutClosed (never "check the disk")."""
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise StdoutClosed() from None


out = OutConsole(soft_wrap=True)
err = ErrConsole(stderr=True, soft_wrap=True)

IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", help="Index folder (default: $VECSEARCH_INDEX, else ~/.local/share/vecsearch/index).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
JsonlOpt = Annotated[bool, typer.Option("--jsonl", help="Print JSON lines: one object per line, for streaming and jq.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# The model flags of the commands that embed (`index`, `embed`).
BackboneOpt = Annotated[Optional[str], typer.Option(
    help="resnet50 (the default; an existing index keeps the one it records), xception, inception_v3, vgg16, mobilenet.", show_default=False)]
WeightsOpt = Annotated[Optional[str], typer.Option(
    help="imagenet (default), none (seeded random init), or a Keras weights FILE.", show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", min=1, help="Images per model call (default 32 on a CPU; 128 on a GPU, 256 with --precision mixed).",
    show_default=False)]
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


# The library's errors name the argument a fix changes (`VecsearchError.option`); here
# is how to change it on the command line.
FLAG_HINTS = {
    "weights": "On the command line: --weights imagenet, --weights none [--seed N] or --weights FILE.",
    "index": "--index DIR (or $VECSEARCH_INDEX) picks the index folder; `vecsearch index PHOTOS` builds one.",
    "unchecked": "On the command line: --unchecked.",
    "max_memory": "On the command line: --max-memory SIZE (e.g. 8GB).",
    "index_type": "On the command line: --index-type flat or --index-type hnsw.",
    "like": "On the command line: --like IMG2 or --id N.",
    "classifier": "On the command line: --classifier NAME --label L.",
    "precision": "On the command line: --precision float32 or --precision mixed.",
    "out": "On the command line: --out DIR, a folder for this job's shards.",
    "shard_size": "On the command line: --shard-size N.",
    "ray_address": "On the command line: --ray-address ADDR, or none for a local Ray.",
    "workers": "On the command line: --workers N (and --gpus-per-worker F).",
    "gpus_per_worker": "On the command line: --gpus-per-worker F (0: the model on CPUs).",
    "train": "Train one with `vecsearch classify --knn` (or --probe), or `vecsearch finetune` for a head.",
    "finetune": "Train one with `vecsearch finetune` (a head over your `teach` labels); then `vecsearch classify --head`.",
    "recorded_model": "On the command line: leave out --backbone, --weights and --seed; the index uses what it records.",
}


def cli_message(e: VecsearchError) -> str:
    """The library's message, plus the command-line spelling of the fix when it names one."""
    hint = FLAG_HINTS.get(getattr(e, "option", None) or "")
    return f"{e} {hint}" if hint else str(e)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Library errors, and faults of the disk, the database or the vector file, become one
    line on stderr that says what to do, and exit code 1; no traceback for any of them.

    A closed stdout (`vecsearch list | head -1`) ends the command quietly with exit code 0:
    the reader has what it wanted, and `set -o pipefail` scripts keep working. What was
    committed is kept, as after any other stop.
    """
    try:
        yield
        try:  # flushed here, not at exit, so a closed pipe is caught below
            sys.stdout.flush()
        except BrokenPipeError:
            raise StdoutClosed() from None
    except StdoutClosed:
        if _has_fd(sys.stdout):
            _point_at_devnull(sys.stdout.fileno())
        raise typer.Exit(0) from None
    except VecsearchError as e:
        error_line(cli_message(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        warn("Interrupted; what was committed is kept, run the same command again to resume.")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - only the faults fault_message knows; others keep their traceback
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            _point_at_devnull(sys.stdout.fileno())
            raise typer.Exit(0) from None
        message = fault_message(e)
        if message is None:
            raise
        logging.getLogger("vecsearch.cli").debug("fault", exc_info=True)
        error_line(message)
        raise typer.Exit(1) from None


def print_json(data) -> None:
    stdout_write(json.dumps(data, indent=2, default=str) + "\n")


def print_jsonl(rows: Iterable) -> None:
    """One compact JSON document per line (JSON lines), written as each row comes.

    `json.dumps` escapes control characters (and non-ASCII), so a row is always one line.
    """
    for row in rows:
        stdout_write(json.dumps(row, default=str) + "\n")


def json_mode(json_out: bool, jsonl: bool) -> str | None:
    """"json", "jsonl" or None (plain text) from the two flags; both at once is an error."""
    if json_out and jsonl:
        raise VecsearchError("Give --json or --jsonl, not both.")
    return "json" if json_out else "jsonl" if jsonl else None


def print_rows(rows: list, mode: str | None) -> bool:
    """Rows as --json (one list) or --jsonl (a line each); False (nothing printed) for plain text."""
    if mode == "json":
        print_json(rows)
    elif mode == "jsonl":
        print_jsonl(rows)
    return mode is not None


RICH_TABLE_ROWS = 500
"""Tables up to this many rows are laid out by `rich.table`; longer ones by `_plain_table`, which
prints the same lines (a test compares them): rich measured 10 s for 20,000 rows here, this 0.1 s."""


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[str] = (),
                header: bool = True, min_widths: Sequence[int] | None = None, console: Console | None = None,
                engine: str | None = None) -> None:
    """An aligned plain table (`rich.table`, no borders, no colours), never wrapped nor truncated.

    Cells are text, never markup, with control characters escaped (`clean`), so a path
    prints verbatim and can be copied. The table is laid out at its natural width, however
    narrow the terminal: a long path makes a long line rather than a folded one.
    Columns named in `right` are right-aligned (numbers); `None` cells print as `-`.
    `min_widths` (one per column) align several tables printed one after another.
    `engine` ("rich" or "plain") forces one layout; by default long tables take the fast one.
    """
    right = set(right)
    cells = [["-" if v is None else clean(v) for v in row] for row in rows]
    widths = list(min_widths) if min_widths else [0] * len(columns)
    engine = engine or ("rich" if len(cells) <= RICH_TABLE_ROWS else "plain")
    lines = (_rich_table if engine == "rich" else _plain_table)(list(columns), cells, right, header, widths)
    console = console or out
    for line in lines:
        if console is out:
            stdout_write(line.rstrip() + "\n")
        else:
            console.file.write(line.rstrip() + "\n")


def _rich_table(columns: list[str], cells: list[list[str]], right: set[str], header: bool, widths: list[int]) -> list[str]:
    import io

    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="", expand=False,
                  show_header=header)
    for name, width in zip(columns, widths):
        table.add_column(Text(name), justify="right" if name in right else "left", no_wrap=True, min_width=width or None)
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    # Laid out on a console as wide as the table's natural width: the terminal's width
    # would fold or cut long paths.
    buffer = io.StringIO()
    layout = Console(file=buffer, width=1 << 20, color_system=None, highlight=False, emoji=False)
    layout.width = max(1, Measurement.get(layout, layout.options, table).maximum)
    layout.print(table, crop=False)
    return buffer.getvalue().splitlines()


def _plain_table(columns: list[str], cells: list[list[str]], right: set[str], header: bool, widths: list[int]) -> list[str]:
    """The lines `_rich_table` prints, made directly: columns as wide as their widest cell (in
    terminal cells: a CJK character takes two), two spaces apart."""
    from rich.cells import cell_len

    body = ([list(columns)] if header else []) + cells
    widths = [max([w] + [cell_len(row[i]) for row in body]) for i, w in enumerate(widths)]
    justify = [name in right for name in columns]
    return ["  ".join((" " * (w - cell_len(c)) + c) if r else (c + " " * (w - cell_len(c)))
                      for c, w, r in zip(row, widths, justify)) for row in body]


def random_weights_warning(ix, what: str) -> str | None:
    """A warning when the index's backbone has random weights (`--weights none`): `what` it
    computes (labels, duplicates) looks confident and means nothing. None otherwise."""
    info = ix.info
    if info is None or info.weights_kind != "random":
        return None
    return (f"the index was built with random weights (--weights none, seed {info.weights_seed}): {what} mean "
            "nothing; build the index with --weights imagenet (or a weights file) for real use.")


def open_index(index: Path | None, **kw):
    """`vecsearch.open_index`, imported on first use so `--help` stays instant."""
    from ..api import open_index as open_

    return open_(index, **kw)


def model_options(backbone: str | None, weights: str | None, seed: int | None) -> dict:
    """The `open_index` arguments for the model flags the user gave (none given: the index decides)."""
    return {k: v for k, v in (("backbone", backbone), ("weights", weights), ("seed", seed)) if v is not None}


RATE_AFTER_SECONDS = 1.0
"""A bar shows images/s only once its step has run this long: a rate over a few milliseconds
(an export of vectors already in memory) is noise, not a speed."""

_bars: list[dict] = []  # the progress bar on screen now, if any: where a model-loading status goes


@contextmanager
def progress_bar(description: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar with images/s, or None (no callback) under --quiet.

    The bar appears on the first update with work to show, so a run that fails early,
    or has nothing to do, leaves no empty bar behind. The rate counts from the first
    update, or from the end of a model load shown on the bar (`model_status`), and shows
    only after RATE_AFTER_SECONDS.
    """
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # markup=False: a description is plain text, never read as rich markup (a path's "[b]" stays).
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]}", markup=False), TimeElapsedColumn(), TimeRemainingColumn()]
    bar = Progress(*columns, console=err, transient=False)
    state: dict = {"bar": bar, "description": description, "done": 0}

    def update(done: int, total: int) -> None:
        if not total:
            return
        if "task" not in state:
            bar.start()
            state["task"] = bar.add_task(description, total=total, rate="")
            state["t0"], state["done0"] = time.perf_counter(), done
        state["done"] = done
        dt = time.perf_counter() - state["t0"]
        n = done - state["done0"]
        rate = f"{n / dt:.1f} img/s" if n > 0 and dt >= RATE_AFTER_SECONDS else ""
        bar.update(state["task"], completed=done, total=total, rate=rate)

    _bars.append(state)
    try:
        yield update
    finally:
        _bars.remove(state)
        if "task" in state:
            bar.stop()


@contextmanager
def model_status(show: bool = True) -> Iterator[None]:
    """"Loading resnet50 (ImageNet weights)..." on stderr while a model loads (seconds to a minute
    of silence otherwise): only where stderr is a terminal, and not with `show` False (--json).

    On a progress bar already showing, the bar's description says it; else a spinner line
    that disappears when the model is ready.
    """
    if not show or not err.is_terminal:
        yield
        return
    from ..backbones import loading_notice

    with loading_notice(_loading_status):
        yield


@contextmanager
def _loading_status(text: str) -> Iterator[None]:
    from rich.text import Text

    shown = next((b for b in reversed(_bars) if "task" in b), None)
    if shown is None:
        with err.status(Text(clean(text))):
            yield
        return
    shown["bar"].update(shown["task"], description=clean(text))
    shown["bar"].refresh()  # drawn now: a load shorter than the refresh interval would never show
    try:
        yield
    finally:  # the rate counts from here: the load is not the images' time
        shown["bar"].update(shown["task"], description=shown["description"])
        shown["t0"], shown["done0"] = time.perf_counter(), shown["done"]


class epoch_status:
    """A one-line status that shows the epoch and validation accuracy; nothing under --quiet."""

    def __init__(self, what: str, epochs: int, quiet: bool):
        self.what, self.epochs, self.quiet, self._status = what, epochs, quiet, None

    def __enter__(self):
        if self.quiet:
            return None
        from rich.text import Text

        self._status = err.status(Text(clean(f"{self.what}...")))
        self._status.__enter__()

        def on_epoch(epoch: int, logs: dict) -> None:
            acc = logs.get("val_accuracy", logs.get("accuracy"))
            self._status.update(Text(clean(f"{self.what}: epoch {epoch}/{self.epochs}"
                                           + (f", accuracy {acc:.3f}" if acc is not None else ""))))

        return on_epoch

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False


# -- where embedding runs (`index`, `embed`) ----------------------------------------------------
EngineOpt = Annotated[str, typer.Option(
    "--engine", metavar="local|ray",
    help="Where images are embedded: local (this process) or ray (a Ray cluster; needs the ray extra, and says how to install it).")]
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
