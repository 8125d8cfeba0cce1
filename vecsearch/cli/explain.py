"""`vecsearch explain`: a heatmap of where in an image the evidence for a class or a similarity lies."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import VecsearchError
from ..explain import OVERLAY_SIDE, describe
from ._common import app, errors_to_exit, open_index, random_weights_warning
from .options import IndexOpt
from .output import model_status, print_json, say, warn


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="The image to explain (any file; it need not be indexed).", show_default=False)],
    imagenet_class: Annotated[
        Optional[str],
        typer.Option("--class", metavar="NAME|WNID", help="An ImageNet class (default: the image's top-1).", show_default=False),
    ] = None,
    classifier: Annotated[
        Optional[str],
        typer.Option(
            "--classifier", metavar="NAME", help="A saved probe (CAM) or fine-tuned head (Grad-CAM) instead.", show_default=False
        ),
    ] = None,
    label: Annotated[
        Optional[str],
        typer.Option(
            "--label", metavar="L", help="With --classifier: the class to explain (default: its prediction).", show_default=False
        ),
    ] = None,
    like: Annotated[
        Optional[Path],
        typer.Option("--like", metavar="IMG2", help="Instead: why IMAGE is similar to this image.", show_default=False),
    ] = None,
    image_id: Annotated[
        Optional[int],
        typer.Option("--id", metavar="N", help="Instead: why IMAGE is similar to indexed image N.", show_default=False),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="HEAT.png",
            help="Where to write the overlay (default: IMAGE's name + .explain.png in the current folder).",
            show_default=False,
        ),
    ] = None,
    side: Annotated[int, typer.Option("--side", min=16, max=4096, help="Longest side of the overlay in pixels.")] = OVERLAY_SIDE,
    weights: Annotated[
        Optional[str],
        typer.Option(
            help="For --class: the with-top weights FILE the ImageNet top comes from (as `vecsearch label --weights`).",
            show_default=False,
        ),
    ] = None,
    index: IndexOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the map as numbers with its shape, and what it explains.")
    ] = False,
) -> None:
    """Overlay a heatmap on IMAGE: where the evidence for an ImageNet class, a classifier's class,
    or the similarity to another image lies (CAM; Grad-CAM for a fine-tuned head)."""
    with errors_to_exit(), model_status(not json_out):
        if like is not None and image_id is not None:
            raise VecsearchError("Give --like IMG2 or --id N, not both.")
        other = like if like is not None else image_id
        target = out if out is not None else Path(f"{image.stem}.explain.png")
        with open_index(index, create=False) as ix:
            result = ix.explain(
                image, like=other, imagenet_class=imagenet_class, classifier=classifier, label=label, weights=weights, side=side
            )
            warning = random_weights_warning(ix, "its heatmaps")
        result.save(target)
        if warning:
            warn(f"Warning: {warning}")
        if json_out:
            print_json(result.to_dict() | {"out": str(target)} | ({"warning": warning} if warning else {}))
            return
        say(describe(result))
        say(f"overlay written to {target}")
