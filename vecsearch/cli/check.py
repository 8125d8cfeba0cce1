"""`vecsearch check`: is anything of the index damaged?"""

from __future__ import annotations

import typer

from ._common import app, errors_to_exit
from .options import IndexOpt, JsonOpt
from .output import error_line, print_json, say


@app.command()
def check(index: IndexOpt = None, json_out: JsonOpt = False) -> None:
    """Check the index for damage: index.db (SQLite's full integrity check), every stored vector
    (CRC-32) and the search structure's file (checksum). Exit 1, saying what to do, if any is damaged."""
    with errors_to_exit():
        from ..health import check_index

        report = check_index(index)
        if json_out:
            print_json(report.to_dict())
        else:
            for line in report.problems():
                error_line(line)
            if report.ok:
                say(
                    f"{report.directory}: index.db sound, {report.vectors} stored vectors match their checksums"
                    + (", vectors.faiss matches its checksum" if report.structure_checked else "")
                )
        if not report.ok:
            raise typer.Exit(1)
