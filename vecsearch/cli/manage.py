"""`vecsearch remove` and `list`: looking after what an index holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import VecsearchError
from ._common import app, errors_to_exit, open_index
from .options import IndexOpt, JsonlOpt, JsonOpt
from .output import json_mode, print_json, print_jsonl, say, warn


@app.command()
def remove(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Indexed files and folders; they may be gone from disk already.", show_default=False),
    ] = None,
    index: IndexOpt = None,
    missing: Annotated[bool, typer.Option("--missing", help="Also drop every entry whose file is gone, wherever it is.")] = False,
    json_out: JsonOpt = False,
    verbose_paths: Annotated[bool, typer.Option("--paths", help="List every removed path.")] = False,
) -> None:
    """Drop files and folders from the index (present or deleted), or with --missing every entry whose file is gone."""
    with errors_to_exit():
        if not paths and not missing:
            raise VecsearchError("Give files or folders to remove, or --missing to drop every entry whose file is gone.")
        with open_index(index, create=False) as ix:
            summary = ix.remove(paths or [], missing=missing)
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)})
            return
        say(f"Removed {summary.removed} image{'s' if summary.removed != 1 else ''} from {ix.directory}")
        if verbose_paths:
            for p in summary.removed_paths:
                say(f"  removed: {p}")
        for p in summary.not_indexed:
            warn(f"  not in the index: {p}")


@app.command("list")
def list_cmd(
    index: IndexOpt = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only the files that could not be read, with the reason (`path: reason`).")
    ] = False,
    all_files: Annotated[
        bool, typer.Option("--all", help="Indexed images and failed files both (failed ones as `path: reason`).")
    ] = False,
    label: Annotated[
        Optional[str], typer.Option("--label", metavar="L", help="Only images taught class L (see `teach`).", show_default=False)
    ] = None,
    under: Annotated[
        Optional[Path], typer.Option("--under", metavar="DIR", help="Only images inside this folder.", show_default=False)
    ] = None,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """List the indexed images by id, one path per line, or JSON; failed files only with --failed or --all."""
    with errors_to_exit():
        mode = json_mode(json_out, jsonl)
        if failed and all_files:
            raise VecsearchError("Give --failed (failed files only) or --all (everything), not both.")
        status = "failed" if failed else None if all_files else "ok"
        with open_index(index, create=False) as ix:
            records = ix.iter_images(status=status, under=under, label=label)
            if mode == "json":
                print_json([_row(r) for r in records])
                return
            if mode == "jsonl":
                print_jsonl(_row(r) for r in records)  # streams: a page of records at a time
                return

            n = 0
            for r in records:
                n += 1
                if r.status == "failed":
                    say(f"{r.path}: {r.reason}")
                else:
                    say(r.path)  # paths only, so the list pipes into other tools
        if not n and (failed or label is not None or under is not None):
            warn("No indexed image matches." if not failed else "No failed files.")


def _row(r) -> dict:
    return {
        "id": r.id,
        "path": r.path,
        "status": r.status,
        "reason": r.reason,
        "size": r.size,
        "width": r.width,
        "height": r.height,
        "sha256": r.sha256,
        "indexed_at": r.indexed_at.isoformat(timespec="seconds") + "Z" if r.indexed_at else None,
    }
