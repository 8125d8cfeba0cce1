"""`vecsearch finetune`: a Keras head on the stored vectors, optionally the backbone's last layers."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import VecsearchError
from ..extras import require_extra
from ..finetune import DEFAULT_NAME, UNFREEZE_EPOCHS, UNFREEZE_LEARNING_RATE, HeadParams
from ._common import app, errors_to_exit, open_index
from .options import IndexOpt, JsonOpt, QuietOpt
from .output import epoch_status, model_status, print_json, progress_bar, say

_HEAD = HeadParams()  # the library's defaults, shown by every flag below


@app.command()
def finetune(
    index: IndexOpt = None,
    name: Annotated[str, typer.Option(help="Name to save the head under (used by `classify --head --name`).")] = DEFAULT_NAME,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs; early stopping usually ends sooner.")] = _HEAD.epochs,
    patience: Annotated[
        int, typer.Option(min=1, help="Epochs without a better validation loss before stopping.")
    ] = _HEAD.patience,
    units: Annotated[int, typer.Option(min=1, help="Width of the hidden Dense + ReLU layer.")] = _HEAD.units,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Dropout before and after the hidden layer.")] = _HEAD.dropout,
    learning_rate: Annotated[
        float, typer.Option("--learning-rate", min=0.0, help="Adam learning rate of the head.")
    ] = _HEAD.learning_rate,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", min=0.01, max=0.9, help="Share of the training images held out (stratified) for early stopping."
        ),
    ] = _HEAD.val_fraction,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, shuffling and validation split.")] = _HEAD.seed,
    plot: Annotated[
        Optional[Path],
        typer.Option(
            "--plot", metavar="FILE.png", help="Write training/validation accuracy and loss curves as a PNG.", show_default=False
        ),
    ] = None,
    unfreeze: Annotated[
        int,
        typer.Option(
            "--unfreeze",
            min=0,
            metavar="N",
            help="Then fine-tune the last N backbone layers end to end on the image files (BatchNorm stays frozen; slow: runs the backbone).",
        ),
    ] = 0,
    unfreeze_epochs: Annotated[
        int, typer.Option("--unfreeze-epochs", min=1, help="Epochs of the end-to-end stage.")
    ] = UNFREEZE_EPOCHS,
    unfreeze_lr: Annotated[
        float, typer.Option("--unfreeze-lr", min=0.0, help="Learning rate of the end-to-end stage (keep it low).")
    ] = UNFREEZE_LEARNING_RATE,
    reembed_into: Annotated[
        Optional[Path],
        typer.Option(
            "--reembed-into",
            metavar="DIR",
            help="With --unfreeze: build a NEW index in DIR with the tuned backbone over the same images (labels and tuned head copied). The current index is never changed: it refuses mixed weights.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a Keras head (dropout, dense+ReLU, batch norm, softmax) on the labelled vectors; save it for `classify --head`."""
    with errors_to_exit(), model_status(not json_out):
        if reembed_into is not None and not unfreeze:
            raise VecsearchError("--reembed-into needs --unfreeze N: without it the backbone is unchanged.")
        if plot is not None:
            require_extra("plot", needed_for="--plot")  # before training: a missing matplotlib saves nothing
        params = HeadParams(
            units=units,
            dropout=dropout,
            epochs=epochs,
            patience=patience,
            learning_rate=learning_rate,
            val_fraction=val_fraction,
            seed=seed,
        )
        with open_index(index, create=False) as ix:
            if reembed_into is not None:
                ix.check_reembed_target(reembed_into)  # refuse a wrong folder before the slow stages
            with epoch_status("Training head", epochs, quiet or json_out) as on_epoch:
                result = ix.finetune(name=name, params=params, on_epoch=on_epoch)
            if plot is not None:
                from ..plots import training_curves

                training_curves(result.history, plot)
            if unfreeze:
                with epoch_status(f"Fine-tuning last {unfreeze} layers", unfreeze_epochs, quiet or json_out) as on_epoch:
                    result.tuned = ix.unfreeze(
                        name, unfreeze, epochs=unfreeze_epochs, learning_rate=unfreeze_lr, seed=seed, on_epoch=on_epoch
                    )
                if reembed_into is not None:
                    with progress_bar("Re-embedding", quiet or json_out) as update:
                        summary = ix.reembed(
                            result.tuned["weights_path"],
                            reembed_into,
                            head_path=result.tuned["head_path"],
                            name=name,
                            progress=update,
                            metrics=_tuned_metrics(result),
                        )
                    result.tuned["reembedded"] = summary.to_dict() | {"index": str(reembed_into)}
        if json_out:
            print_json(result.to_dict() | {"plot": str(plot) if plot else None})
            return
        m = result.metrics
        say(
            f"Head {result.name!r} trained on {m['n_train']} images, {len(result.classes)} classes; "
            f"{m['epochs_run']} epochs, kept epoch {m['best_epoch']} (validation accuracy {m['best_val_accuracy']:.4f})"
        )
        say(f"test accuracy {m['accuracy']:.4f} on {m['n_test']} images ({m['method']})")
        named = f" --name {shlex.quote(result.name)}" if result.name != DEFAULT_NAME else ""
        where = f" --index {shlex.quote(str(index))}" if index is not None else ""
        say(f"saved to {result.path}; apply it with `vecsearch classify --head{named}{where}`")
        if plot is not None:
            say(f"training curves written to {plot}")
        t = result.tuned
        if t:
            acc = f", test accuracy {t['test_accuracy']:.4f}" if "test_accuracy" in t else ""
            say(
                f"Fine-tuned the last {t['unfrozen_layers']} backbone layers for {t['epochs']} epoch(s){acc}; "
                f"weights changed: {'yes' if t['weights_changed'] else 'no'}"
            )
            say(f"tuned backbone weights: {t['weights_path']}")
            if "reembedded" in t:
                r = t["reembedded"]
                say(
                    f"Re-embedded {r['indexed']} images into {r['index']} (failed {len(r['failed'])}); "
                    f"use it with `vecsearch classify --head{named} --index {shlex.quote(r['index'])}`"
                )
            else:
                say("the index is unchanged; add --reembed-into DIR to build an index with the tuned backbone")


def _tuned_metrics(result) -> dict:
    """What the tuned head is known to score, stored with it in the new index."""
    t = result.tuned
    if "test_accuracy" not in t:
        return {}
    return {
        "accuracy": t["test_accuracy"],
        "method": result.metrics["method"],
        "n_test": result.metrics["n_test"],
        "unfrozen_layers": t["unfrozen_layers"],
    }
