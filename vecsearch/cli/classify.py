"""`vecsearch teach`, `classify` and `classifiers`: classes of the user's own and models over them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..classifiers import DEFAULT_TOP
from ..classify import DEFAULT_K
from ..errors import VecsearchError
from ..extras import require_extra
from ..zero_shot import DEFAULT_PROMPT
from ._common import app, errors_to_exit, open_index
from .options import IndexOpt, JsonOpt, QuietOpt, model_options
from .output import json_mode, model_status, print_json, print_jsonl, print_table, progress_bar, say, warn

SHOWN_PREDICTIONS = 20


@app.command()
def teach(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="FOLDER_OR_CSV",
            help="A folder of class sub-folders (FOLDER/cat/*.jpg; FOLDER/train/cat/... and FOLDER/test/cat/... "
            "for splits) or a CSV of path,label[,split] (paths relative to the CSV).",
            show_default=False,
        ),
    ],
    index: IndexOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="Forget every earlier label of the index first.")] = False,
    backbone: Annotated[
        Optional[str], typer.Option(help="Backbone for a new index (as `vecsearch index`).", show_default=False)
    ] = None,
    weights: Annotated[
        Optional[str], typer.Option(help="Weights for a new index: imagenet, none, or a FILE.", show_default=False)
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label images with classes of your own, from class folders or a CSV; unindexed files are indexed first."""
    with errors_to_exit(), model_status(not json_out):
        with open_index(index, **model_options(backbone, weights, seed)) as ix:
            with progress_bar("Embedding", quiet or json_out) as update:
                summary = ix.teach(source, replace=replace, progress=update)
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)})
            return
        say(
            f"Labelled {summary.labelled} image{'s' if summary.labelled != 1 else ''} from {summary.kind} {summary.source} "
            f"({summary.indexed} newly indexed) -> {ix.directory}"
        )
        splits = sorted({s for per in summary.counts.values() for s in per})
        names = [s or "images" for s in splits]
        print_table(
            ["class", *names], ([label, *(per.get(s, 0) for s in splits)] for label, per in summary.counts.items()), right=names
        )
        for f in summary.failed:
            warn(f"  not labelled (could not be embedded): {f['path']}: {f['reason']}")
        if summary.skipped:
            warn(f"  skipped {summary.skipped} label(s): their images were removed meanwhile by another indexer")


@app.command()
def classify(
    image: Annotated[
        Optional[Path],
        typer.Argument(
            help="Predict this one image with a saved classifier. Without it, train (--knn/--probe) or "
            "apply (--head) a classifier and predict every unlabelled image.",
            show_default=False,
        ),
    ] = None,
    knn: Annotated[
        bool, typer.Option("--knn", help="k-nearest-neighbours: cosine-weighted vote of the labelled images.")
    ] = False,
    probe: Annotated[
        bool, typer.Option("--probe", help="Linear probe: logistic regression, C chosen by cross-validation.")
    ] = False,
    head: Annotated[bool, typer.Option("--head", help="The fine-tuned head saved by `vecsearch finetune`.")] = False,
    zero_shot: Annotated[
        Optional[str],
        typer.Option(
            "--zero-shot",
            metavar="LABELS",
            help='Predict every image as one of these classes ("cat,dog,car") from their names alone, with a CLIP '
            "or SigLIP index; scored on the taught labels of those classes if there are any.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str, typer.Option("--prompt", metavar="TEMPLATE", help="With --zero-shot: the prompt of each class.")
    ] = DEFAULT_PROMPT,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Neighbours for --knn.")] = DEFAULT_K,
    name: Annotated[
        Optional[str],
        typer.Option(help="Classifier name to save or use (default: its kind; with IMAGE: the newest).", show_default=False),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", metavar="FILE.png", help="Write the confusion matrix as a PNG.", show_default=False),
    ] = None,
    index: IndexOpt = None,
    json_out: JsonOpt = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print the predictions as JSON lines, one image a line.")] = False,
) -> None:
    """Train, evaluate and apply classifiers on your labels; or classify one IMAGE."""
    with errors_to_exit(), model_status(not (json_out or jsonl)):
        json_mode(json_out, jsonl)
        chosen = [kind for kind, flag in (("knn", knn), ("probe", probe), ("head", head)) if flag]
        if len(chosen) > 1:
            raise VecsearchError("Choose one of --knn, --probe, --head.")
        kind = chosen[0] if chosen else None
        if zero_shot is not None and (kind is not None or image is not None):
            raise VecsearchError("--zero-shot predicts every image by itself: leave out IMAGE, --knn, --probe and --head.")
        if plot is not None:
            if image is not None:
                raise VecsearchError("--plot goes with training (no IMAGE).")
            require_extra("plot", needed_for="--plot")  # before training: a missing matplotlib saves nothing
        if image is not None:
            with open_index(index, create=False) as ix:
                result = ix.classify(image, name=name, kind=kind, top=DEFAULT_TOP)
            if json_out:
                print_json(result.to_dict())
                return
            if jsonl:
                print_jsonl([result.to_dict()])
                return
            by = result.classifier if result.classifier == result.kind else f"{result.classifier}, {result.kind}"
            print_table(
                ["label", "confidence"], ((t["label"], f"{t['confidence']:.4f}") for t in result.top), right=["confidence"]
            )
            say(f"(classifier {by})")
            return
        if kind is None and zero_shot is None:
            raise VecsearchError('Choose --knn, --probe, --head or --zero-shot "cat,dog" (or give an IMAGE to classify).')
        with open_index(index, create=False) as ix:
            if zero_shot is not None:
                result = ix.zero_shot(zero_shot, prompt=prompt)
            elif kind == "head":
                result = ix.apply_classifier(name, kind="head")
            else:
                result = ix.train_classifier(kind, k=k, name=name)
        metrics = result.metrics
        if plot is not None and metrics.get("confusion"):
            from ..plots import confusion_matrix

            confusion_matrix(
                metrics["classes"], metrics["confusion"], plot, title=f"{result.name}: accuracy {metrics['accuracy']:.3f}"
            )
        if json_out:
            print_json(result.to_dict() | {"plot": str(plot) if plot else None})
            return
        if jsonl:
            print_jsonl(result.predictions)
            return
        _print_result(result, plot)


def _print_result(result, plot: Path | None) -> None:
    m = result.metrics
    what = {
        "knn": f"k-NN (k={result.params.get('k')})",
        "probe": f"linear probe (C={result.params.get('C')})",
        "head": "fine-tuned head",
        "zero-shot": f"zero-shot ({len(result.params.get('labels', []))} classes, prompt {result.params.get('prompt')!r})",
    }[result.kind]
    ev = result.evaluation
    if result.kind == "zero-shot":
        n = m.get("n_test", 0)
        say(
            f"{what}; "
            + (f"scored on {n} taught image{'s' if n != 1 else ''}" if n else "no taught labels of these classes to score on")
        )
    elif ev is not None:
        say(f"{what} saved as {result.name!r}; evaluated on {ev.method}: {ev.n_train} train, {ev.n_test} test images")
    else:
        say(f"{what} {result.name!r} (evaluated when trained)")
    if "accuracy" in m:
        say(f"accuracy  {m['accuracy']:.4f}")
    report = m.get("report")
    if report:
        classes = m["classes"]
        say()
        numbers = ["precision", "recall", "f1", "support"]
        print_table(
            ["class", *numbers],
            (
                [
                    c,
                    f"{report[c]['precision']:.3f}",
                    f"{report[c]['recall']:.3f}",
                    f"{report[c]['f1-score']:.3f}",
                    int(report[c]["support"]),
                ]
                for c in classes
            ),
            right=numbers,
        )
        say()
        say("confusion matrix (rows: true, columns: predicted)")
        print_table(["", *classes], ([c, *row] for c, row in zip(classes, m["confusion"], strict=False)), right=classes)
    if plot is not None and m.get("confusion"):
        say(f"confusion matrix written to {plot}")
    preds = result.predictions
    if result.skipped:
        warn(f"skipped {result.skipped} prediction(s): their images were removed meanwhile by another indexer")
    say()
    if not preds:
        say("No unlabelled images to predict.")
        return
    if result.kind == "zero-shot":
        say(f"Predicted {len(preds)} images (not stored; --json or --jsonl to keep them):")
    else:
        say(f"Predicted {len(preds)} unlabelled images (stored under {result.name!r}):")
    print_table(
        ["label", "confidence", "path"],
        ((p["label"], f"{p['confidence']:.4f}", p["path"]) for p in preds[:SHOWN_PREDICTIONS]),
        right=["confidence"],
    )
    if len(preds) > SHOWN_PREDICTIONS:
        say(f"... and {len(preds) - SHOWN_PREDICTIONS} more (--json or --jsonl for all)")


@app.command()
def classifiers(index: IndexOpt = None, json_out: JsonOpt = False) -> None:
    """List the classifiers trained in an index, newest first, and the labels they learnt from."""
    with errors_to_exit():
        with open_index(index, create=False) as ix:
            rows = ix.classifiers()
            counts = ix.label_counts()
        if json_out:
            print_json({"classifiers": rows, "labels": counts})
            return
        total = sum(sum(per.values()) for per in counts.values())
        say(f"{total} labelled images in {len(counts)} classes" + (f": {', '.join(counts)}" if counts else ""))
        if not rows:
            say("No classifiers yet; run `vecsearch classify --knn` or `--probe`.")
            return

        def accuracy(r: dict) -> str | None:
            acc = r["metrics"].get("accuracy")
            return f"{acc:.4f}" if isinstance(acc, (int, float)) else None

        print_table(
            ["name", "kind", "created_at", "accuracy"],
            ((r["name"], r["kind"], r["created_at"], accuracy(r)) for r in rows),
            right=["accuracy"],
        )
