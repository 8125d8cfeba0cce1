"""`vecsearch finetune`, `dupes` and `similarity`: a trained head, near-duplicates, cosine matrices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import VecsearchError
from . import IndexOpt, JsonOpt, QuietOpt, _open, app, err, errors_to_exit, out, print_json, progress_bar


def _say(s: str = "") -> None:
    out.print(s, highlight=False, markup=False)


@app.command()
def finetune(
    index: IndexOpt = None,
    name: Annotated[str, typer.Option(help="Name to save the head under (used by `classify --head --name`).")] = "head",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs; early stopping usually ends sooner.")] = 200,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without a better validation loss before stopping.")] = 15,
    units: Annotated[int, typer.Option(min=1, help="Width of the hidden Dense + ReLU layer.")] = 256,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="Dropout before and after the hidden layer.")] = 0.2,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0.0, help="Adam learning rate of the head.")] = 1e-3,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.01, max=0.9, help="Share of the training images held out (stratified) for early stopping.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, shuffling and validation split.")] = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Write training/validation accuracy and loss curves as a PNG.", show_default=False)] = None,
    unfreeze: Annotated[int, typer.Option("--unfreeze", min=0, metavar="N", help="Then fine-tune the last N backbone layers end to end on the image files (BatchNorm stays frozen; slow: runs the backbone).")] = 0,
    unfreeze_epochs: Annotated[int, typer.Option("--unfreeze-epochs", min=1, help="Epochs of the end-to-end stage.")] = 3,
    unfreeze_lr: Annotated[float, typer.Option("--unfreeze-lr", min=0.0, help="Learning rate of the end-to-end stage (keep it low).")] = 1e-5,
    reembed_into: Annotated[Optional[Path], typer.Option("--reembed-into", metavar="DIR", help="With --unfreeze: build a NEW index in DIR with the tuned backbone over the same images (labels and tuned head copied). The current index is never changed: it refuses mixed weights.", show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a Keras head (dropout, dense+ReLU, batch norm, softmax) on the labelled vectors; save it for `classify --head`."""
    from .. import finetune as F

    with errors_to_exit():
        if reembed_into is not None and not unfreeze:
            raise VecsearchError("--reembed-into needs --unfreeze N: without it the backbone is unchanged.")
        params = F.HeadParams(units=units, dropout=dropout, epochs=epochs, patience=patience,
                              learning_rate=learning_rate, val_fraction=val_fraction, seed=seed)
        with _open(index, create=False) as ix:
            if reembed_into is not None:
                F.reembed_target(ix, reembed_into)  # refuse a wrong folder before the slow stages
            with _epoch_status("Training head", epochs, quiet or json_out) as on_epoch:
                result = F.finetune(ix, name=name, params=params, on_epoch=on_epoch)
            if plot is not None:
                from ..plots import training_curves

                training_curves(result.history, plot)
            if unfreeze:
                head = F.load_head(result.path)
                with _epoch_status(f"Fine-tuning last {unfreeze} layers", unfreeze_epochs, quiet or json_out) as on_epoch:
                    result.tuned = F.unfreeze(ix, head, unfreeze, epochs=unfreeze_epochs, learning_rate=unfreeze_lr,
                                              seed=seed, name=name, on_epoch=on_epoch)
                if reembed_into is not None:
                    with progress_bar("Re-embedding", quiet or json_out) as update:
                        summary = F.reembed(ix, result.tuned["weights_path"], reembed_into,
                                            head_path=result.tuned["head_path"], name=name, progress=update,
                                            metrics=_tuned_metrics(result))
                    result.tuned["reembedded"] = summary.to_dict() | {"index": str(reembed_into)}
        if json_out:
            print_json(result.to_dict() | {"plot": str(plot) if plot else None})
            return
        m = result.metrics
        _say(f"Head {result.name!r} trained on {m['n_train']} images, {len(result.classes)} classes; "
             f"{m['epochs_run']} epochs, kept epoch {m['best_epoch']} (validation accuracy {m['best_val_accuracy']:.4f})")
        _say(f"test accuracy {m['accuracy']:.4f} on {m['n_test']} images ({m['method']})")
        _say(f"saved to {result.path}; apply it with `vecsearch classify --head`")
        if plot is not None:
            _say(f"training curves written to {plot}")
        t = result.tuned
        if t:
            acc = f", test accuracy {t['test_accuracy']:.4f}" if "test_accuracy" in t else ""
            _say(f"Fine-tuned the last {t['unfrozen_layers']} backbone layers for {t['epochs']} epoch(s){acc}; "
                 f"weights changed: {'yes' if t['weights_changed'] else 'no'}")
            _say(f"tuned backbone weights: {t['weights_path']}")
            if "reembedded" in t:
                r = t["reembedded"]
                _say(f"Re-embedded {r['indexed']} images into {r['index']} (failed {len(r['failed'])}); "
                     f"use it with --index {r['index']}")
            else:
                _say("the index is unchanged; add --reembed-into DIR to build an index with the tuned backbone")


def _tuned_metrics(result) -> dict:
    """What the tuned head is known to score, stored with it in the new index."""
    t = result.tuned
    if "test_accuracy" not in t:
        return {}
    return {"accuracy": t["test_accuracy"], "method": result.metrics["method"], "n_test": result.metrics["n_test"],
            "unfrozen_layers": t["unfrozen_layers"]}


class _epoch_status:
    """A one-line status that shows the epoch and validation accuracy; nothing under --quiet."""

    def __init__(self, what: str, epochs: int, quiet: bool):
        self.what, self.epochs, self.quiet, self._status = what, epochs, quiet, None

    def __enter__(self):
        if self.quiet:
            return None
        self._status = err.status(f"{self.what}...")
        self._status.__enter__()

        def on_epoch(epoch: int, logs: dict) -> None:
            acc = logs.get("val_accuracy", logs.get("accuracy"))
            self._status.update(f"{self.what}: epoch {epoch}/{self.epochs}" + (f", accuracy {acc:.3f}" if acc is not None else ""))

        return on_epoch

    def __exit__(self, *exc):
        if self._status is not None:
            self._status.__exit__(*exc)
        return False


@app.command()
def dupes(
    index: IndexOpt = None,
    threshold: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Cosine similarity at or above which two images count as near-duplicates.")] = 0.95,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Neighbours looked at per image (the graph's fan-out).")] = 10,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Group near-duplicate images (resized, re-encoded, lightly edited copies) of the index."""
    from ..dupes import duplicate_groups

    with errors_to_exit():
        with _open(index, create=False) as ix:
            with progress_bar("Comparing", quiet or json_out) as update:
                groups = duplicate_groups(ix, threshold, k=k, progress=update)
        if json_out:
            print_json([g.to_dict() for g in groups])
            return
        if not groups:
            _say(f"No near-duplicates at similarity >= {threshold}.")
            return
        n = sum(len(g.ids) for g in groups)
        _say(f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates ({n} images) at similarity >= {threshold}:")
        for i, g in enumerate(groups, 1):
            span = f"{g.score:.4f}" if g.min_score == g.score else f"{g.min_score:.4f}-{g.score:.4f}"
            _say(f"group {i}: {len(g.ids)} images, similarity {span}")
            for p in g.paths:
                _say(f"  {p}")


@app.command()
def similarity(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Two or more image files (indexed ones reuse their stored vectors).", show_default=False)],
    index: IndexOpt = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Also draw the matrix as a heatmap PNG.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Print the cosine-similarity matrix of a few images, with the index's backbone."""
    from ..dupes import similarity_matrix

    with errors_to_exit():
        with _open(index, create=False) as ix:
            sims = similarity_matrix(ix, images)
        paths = [str(p) for p in images]
        if plot is not None:
            from ..plots import similarity_matrix as plot_matrix

            plot_matrix(paths, sims, plot)
        if json_out:
            print_json({"paths": paths, "matrix": [[round(float(v), 6) for v in row] for row in sims],
                        "plot": str(plot) if plot else None})
            return
        n = len(paths)
        _say("      " + "".join(f"{j:>8}" for j in range(1, n + 1)))
        for i in range(n):
            _say(f"{i + 1:>4}  " + "".join(f"{sims[i, j]:8.4f}" for j in range(n)) + f"  {paths[i]}")
        if plot is not None:
            _say(f"heatmap written to {plot}")
