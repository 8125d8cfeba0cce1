"""`vecsearch dupes` and `similarity`: near-duplicate groups and cosine matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..dupes import DEFAULT_NEIGHBOURS, DEFAULT_THRESHOLD
from ._common import IndexOpt, JsonOpt, QuietOpt, app, errors_to_exit, open_index, print_json, progress_bar, say


@app.command()
def dupes(
    index: IndexOpt = None,
    threshold: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Cosine similarity at or above which two images count as near-duplicates.")] = DEFAULT_THRESHOLD,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Neighbours looked at per image (the graph's fan-out).")] = DEFAULT_NEIGHBOURS,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Group near-duplicate images (resized, re-encoded, lightly edited copies) of the index."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            with progress_bar("Comparing", quiet or json_out) as update:
                groups = ix.duplicates(threshold, k=k, progress=update)
        if json_out:
            print_json([g.to_dict() for g in groups])
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
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Two or more image files (indexed ones reuse their stored vectors).", show_default=False)],
    index: IndexOpt = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Also draw the matrix as a heatmap PNG.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the cosine-similarity matrix of a few images, with the index's backbone."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            sims = ix.similarity(images)
        paths = [str(p) for p in images]
        if plot is not None:
            from ..plots import similarity_matrix as plot_matrix

            plot_matrix(paths, sims, plot)
        if json_out:
            print_json({"paths": paths, "matrix": [[round(float(v), 6) for v in row] for row in sims],
                        "plot": str(plot) if plot else None})
            return
        n = len(paths)
        say("      " + "".join(f"{j:>8}" for j in range(1, n + 1)))
        for i in range(n):
            say(f"{i + 1:>4}  " + "".join(f"{sims[i, j]:8.4f}" for j in range(n)) + f"  {paths[i]}")
        if plot is not None:
            say(f"heatmap written to {plot}")
