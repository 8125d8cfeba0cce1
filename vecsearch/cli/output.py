"""What the CLI prints, and where: the stdout and stderr consoles, escaped text, tables, JSON and
JSON lines, progress bars and status lines.

Everything printed from files and users (paths, labels, reasons) goes through `clean`; a closed
stdout becomes `StdoutClosed`, which `errors_to_exit` (in _common) ends quietly.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

from rich.console import Console

from ..errors import VecsearchError


# -- the consoles ------------------------------------------------------------------------------
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
        point_at_devnull(2)


def point_at_devnull(fd: int) -> None:
    """Make `fd` write to /dev/null, so Python's flush of its buffer at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass


def has_fd(stream) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError elsewhere is a real fault)."""
    if not has_fd(sys.stdout):
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


# -- escaped text ---------------------------------------------------------------------------
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


# -- JSON and JSON lines ----------------------------------------------------------------------
def print_json(data) -> None:
    stdout_write(json.dumps(data, indent=2, default=str) + "\n")


def print_jsonl(rows: Iterable) -> None:
    """One compact JSON document per line (JSON lines), written as each row comes.

    `json.dumps` escapes control characters (and non-ASCII), so a row is always one line.
    """
    for row in rows:
        stdout_write(json.dumps(row, default=str) + "\n")


def json_mode(json_out: bool, jsonl: bool) -> str | None:
    """ "json", "jsonl" or None (plain text) from the two flags; both at once is an error."""
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


# -- tables ---------------------------------------------------------------------------------
RICH_TABLE_ROWS = 500
"""Tables up to this many rows are laid out by `rich.table`; longer ones by `_plain_table`, which
prints the same lines (a test compares them): rich measured 10 s for 20,000 rows here, this 0.1 s."""


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    right: Iterable[str] = (),
    header: bool = True,
    min_widths: Sequence[int] | None = None,
    console: Console | None = None,
    engine: str | None = None,
) -> None:
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

    table = Table(
        box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="", expand=False, show_header=header
    )
    for name, width in zip(columns, widths, strict=False):
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
    return [
        "  ".join(
            (" " * (w - cell_len(c)) + c) if r else (c + " " * (w - cell_len(c)))
            for c, w, r in zip(row, widths, justify, strict=False)
        )
        for row in body
    ]


# -- progress and status lines --------------------------------------------------------------
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # markup=False: a description is plain text, never read as rich markup (a path's "[b]" stays).
    columns = [
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}", markup=False),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
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
    """ "Loading resnet50 (ImageNet weights)..." on stderr while a model loads (seconds to a minute
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

        status = self._status = err.status(Text(clean(f"{self.what}...")))
        status.__enter__()

        def on_epoch(epoch: int, logs: dict) -> None:
            acc = logs.get("val_accuracy", logs.get("accuracy"))
            status.update(
                Text(clean(f"{self.what}: epoch {epoch}/{self.epochs}" + (f", accuracy {acc:.3f}" if acc is not None else "")))
            )

        return on_epoch

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False
