"""`vecsearch backbones`: the models an index can be built with, and what each gives."""

from __future__ import annotations

from ._common import app, errors_to_exit
from .options import JsonOpt
from .output import print_json, print_table


@app.command("backbones")
def backbones(json_out: JsonOpt = False) -> None:
    """List the backbones `--backbone` takes: input size, vector width, whether it has an ImageNet
    top (`label`, `query --imagenet`), the layer explanations map, and whether it embeds words too
    (`query --text`, `classify --zero-shot`). Nothing is built or downloaded."""
    with errors_to_exit():
        from ..backbones import catalogue

        rows = catalogue()
        if json_out:
            print_json(rows)
            return
        print_table(
            ["backbone", "input", "dim", "imagenet top", "explain layer", "text", "from"],
            [
                [
                    r["name"],
                    r["input"],
                    r["dim"],
                    "yes" if r["imagenet_top"] else "no",
                    r["last_conv_layer"] or "not available",
                    "yes" if r["text"] else "no",
                    r["source"],
                ]
                for r in rows
            ],
            right={"dim"},
        )
