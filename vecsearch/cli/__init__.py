"""The `vecsearch` command: parse, show progress, print, map errors to exit codes. No logic.

One module per concept registers its commands on the shared app (`_common.app`); they are
imported here in the order `--help` lists them. The options they share are in options.py, what
they print (and how) in output.py.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from ._common import app

__all__ = ["app"]


def _print_version(value: bool) -> None:
    if value:
        from ..config import VERSION

        typer.echo(f"vecsearch {VERSION}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv for debug).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """vecsearch: image embeddings, similarity search and classifiers on frozen Keras backbones."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Registration order is --help order: the core, remove and list, check, shards for large jobs, ImageNet labels,
# classes of your own, fine-tuning, duplicates and similarity, explanations, the service.
# isort: off
from . import index  # noqa: E402,F401
from . import backbones  # noqa: E402,F401
from . import manage  # noqa: E402,F401
from . import check  # noqa: E402,F401
from . import embed  # noqa: E402,F401
from . import labels  # noqa: E402,F401
from . import classify  # noqa: E402,F401
from . import finetune  # noqa: E402,F401
from . import dupes  # noqa: E402,F401
from . import explain  # noqa: E402,F401
from . import serve  # noqa: E402,F401
# isort: on

if __name__ == "__main__":  # pragma: no cover
    app()
