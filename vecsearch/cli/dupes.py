"""`vecsearch dupes` and `similarity`: near-duplicate groups and cosine matrices."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD
from ..errors import VecsearchError
from ..extras import require_extra
from ._common import app, errors_to_exit, open_index, random_weights_warning
from .options import IndexOpt, JsonlOpt, JsonOpt, QuietOpt
from .output import json_mode, model_status, print_json, print_rows, print_table, progress_bar, say, warn


class Keep(str, Enum):
    oldest = "oldest"
    largest = "largest"


@app.command()
def dupes(
    index: IndexOpt = None,
    threshold: Annotated[
        float, typer.Option(min=-1.0, max=1.0, help="Cosine similarity at or above which two images count as near-duplicates.")
    ] = DEFAULT_THRESHOLD,
    k: Annotated[
        int, typer.Option("--k", "-k", min=1, help="Neighbours looked at per image (the graph's fan-out).")
    ] = DEFAULT_NEIGHBOURS,
    to_remove: Annotated[
        bool,
        typer.Option(
            "--to-remove",
            help="Print only the copies to delete, one path a line: every group's images but the one --keep chooses.",
        ),
    ] = False,
    keep: Annotated[
        Optional[Keep],
        typer.Option(
            "--keep",
            show_default=False,
            help="With --to-remove, the image of a group to keep: oldest (the default: the earliest modification time, then the most bytes, then the shortest path; the original, never an upscaled copy made later) or largest (the most pixels, then bytes; an upscaled copy wins over its original).",
        ),
    ] = None,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Group near-duplicate images (resized, re-encoded, lightly edited copies) of the index."""
    with errors_to_exit():
        mode = json_mode(json_out, jsonl)
        if keep is not None and not to_remove:
            raise VecsearchError("--keep goes with --to-remove.")
        with open_index(index, create=False) as ix:
            with progress_bar("Comparing", quiet or mode is not None or to_remove) as update:
                groups = ix.duplicates(threshold, k=k, keep=(keep or Keep.oldest).value if to_remove else None, progress=update)
            warning = random_weights_warning(ix, "its near-duplicate groups")
        if warning:  # once, on stderr, in every mode: not a copy in each JSON object
            warn(f"Warning: {warning}")
        if to_remove:
            rows = [{"path": p, "keep": g.keep, "group": i} for i, g in enumerate(groups, 1) for p in g.remove]
            if not print_rows(rows, mode):
                for row in rows:
                    say(row["path"])
            return
        if print_rows([g.to_dict() for g in groups], mode):
            return
        if not groups:
            say(f"No near-duplicates at similarity >= {threshold}.")
            return
        n = sum(len(g.ids) for g in groups)
        say(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates ({n} images) at similarity >= {threshold}:")
        for i, g in enumerate(groups, 1):
            span = f"{g.score:.4f}" if g.min_score == g.score else f"{g.min_score:.4f}-{g.score:.4f}"
            say(f"group {i}: {len(g.ids)} images, similarity {span}")
            for p in g.paths:
                say(f"  {p}")


@app.command()
def similarity(
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE...", help="Two or more image files (indexed ones reuse their stored vectors).", show_default=False
        ),
    ],
    index: IndexOpt = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", metavar="FILE.png", help="Also draw the matrix as a heatmap PNG.", show_default=False),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the cosine-similarity matrix of a few images, with the index's backbone."""
    with errors_to_exit(), model_status(not json_out):
        if plot is not None:
            require_extra("plot", needed_for="--plot")
        with open_index(index, create=False) as ix:
            sims = ix.similarity(images)
        paths = [str(p) for p in images]
        if plot is not None:
            from ..plots import similarity_matrix as plot_matrix

            plot_matrix(paths, sims, plot)
        if json_out:
            print_json(
                {
                    "paths": paths,
                    "matrix": [[round(float(v), 6) for v in row] for row in sims],
                    "plot": str(plot) if plot else None,
                }
            )
            return
        numbers = [str(j) for j in range(1, len(paths) + 1)]
        print_table(
            ["", *numbers, "path"],
            ([str(i + 1), *(f"{v:.4f}" for v in sims[i]), p] for i, p in enumerate(paths)),
            right=["", *numbers],
        )
        if plot is not None:
            say(f"heatmap written to {plot}")
