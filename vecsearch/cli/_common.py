"""What every CLI module shares: the Typer app, library errors and faults to exit codes, and opening the index.

Command modules import from here (and from options.py and output.py) and register on `app`;
nothing here imports them back.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer

from ..errors import VecsearchError, fault_message
from .output import StdoutClosed, error_line, has_fd, point_at_devnull, stdout_is_closed, warn


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


# The library's errors name the argument a fix changes (`VecsearchError.option`); here
# is how to change it on the command line.
FLAG_HINTS = {
    "weights": "On the command line: --weights imagenet, --weights none [--seed N], --weights FILE, or for a "
    "keras-hub backbone --weights FOLDER (a local preset).",
    "text": "On the command line: `vecsearch query --text WORDS` on a CLIP or SigLIP index; "
    "`vecsearch query --imagenet NAME` lists ImageNet classes with any backbone.",
    "zero_shot": 'On the command line: --zero-shot "cat,dog,car".',
    "prompt": 'On the command line: --prompt "a photo of a {label}".',
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
    "replicas": "On the command line: --replicas N or --autoscale MIN:MAX (and --cpus-per-replica F).",
    "autoscale": "On the command line: --autoscale MIN:MAX, e.g. --autoscale 1:4.",
    "gpus_per_replica": "On the command line: --gpus-per-replica F (0: the model on CPUs).",
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
        if has_fd(sys.stdout):
            point_at_devnull(sys.stdout.fileno())
        raise typer.Exit(0) from None
    except VecsearchError as e:
        error_line(cli_message(e))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        warn("Interrupted; what was committed is kept, run the same command again to resume.")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - only the faults fault_message knows; others keep their traceback
        if isinstance(e, BrokenPipeError) and stdout_is_closed():
            point_at_devnull(sys.stdout.fileno())
            raise typer.Exit(0) from None
        message = fault_message(e)
        if message is None:
            raise
        logging.getLogger("vecsearch.cli").debug("fault", exc_info=True)
        error_line(message)
        raise typer.Exit(1) from None


def random_weights_warning(ix, what: str) -> str | None:
    """A warning when the index's backbone has random weights (`--weights none`): `what` it
    computes (labels, duplicates) looks confident and means nothing. None otherwise."""
    info = ix.info
    if info is None or info.weights_kind != "random":
        return None
    return (
        f"the index was built with random weights (--weights none, seed {info.weights_seed}): {what} mean "
        "nothing; build the index with --weights imagenet (or a weights file) for real use."
    )


def open_index(index: Path | None, **kw):
    """`vecsearch.open_index`, imported on first use so `--help` stays instant."""
    from ..opening import open_index as open_

    return open_(index, **kw)
