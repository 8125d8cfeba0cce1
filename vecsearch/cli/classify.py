"""`vecsearch teach`, `classify` and `classifiers`: classes of the user's own and models over them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..classifiers import DEFAULT_TOP
from ..classify import DEFAULT_K
from ..errors import VecsearchError
from ._common import (IndexOpt, JsonOpt, QuietOpt, app, errors_to_exit, model_options, open_index, print_json,
                      progress_bar, say, warn)

SHOWN_PREDICTIONS = 20


@app.command()
def teach(
    source: Annotated[Path, typer.Argument(
        metavar="FOLDER_OR_CSV",
        help="A folder of class sub-folders (FOLDER/cat/*.jpg; FOLDER/train/cat/... and FOLDER/test/cat/... "
             "for splits) or a CSV of path,label[,split] (paths relative to the CSV).", show_default=False)],
    index: IndexOpt = None,
    replace: Annotated[bool, typer.Option("--replace", help="Forget every earlier label of the index first.")] = False,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone for a new index (as `vecsearch index`).", show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option(help="Weights for a new index: imagenet, none, or a FILE.", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the random init for --weights none.", show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Label images with classes of your own, from class folders or a CSV; unindexed files are indexed first."""
    with errors_to_exit():
        with open_index(index, **model_options(backbone, weights, seed)) as ix:
            with progress_bar("Embedding", quiet or json_out) as update:
                summary = ix.teach(source, replace=replace, progress=update)
        if json_out:
            print_json(summary.to_dict() | {"index": str(ix.directory)})
            return
        say(f"Labelled {summary.labelled} image{'s' if summary.labelled != 1 else ''} from {summary.kind} {summary.source} "
            f"({summary.indexed} newly indexed) -> {ix.directory}")
        splits = sorted({s for per in summary.counts.values() for s in per})
        header = "".join(f"{(s or 'images'):>8}" for s in splits)
        width = max([len("class")] + [len(c) for c in summary.counts])
        say(f"{'class':<{width}}{header}")
        for label, per in summary.counts.items():
            say(f"{label:<{width}}" + "".join(f"{per.get(s, 0):>8}" for s in splits))
        for f in summary.failed:
            warn(f"  not labelled (could not be embedded): {f['path']}: {f['reason']}")
        if summary.skipped:
            warn(f"  skipped {summary.skipped} label(s): their images were removed meanwhile by another indexer")


@app.command()
def classify(
    image: Annotated[Optional[Path], typer.Argument(
        help="Predict this one image with a saved classifier. Without it, train (--knn/--probe) or "
             "apply (--head) a classifier and predict every unlabelled image.", show_default=False)] = None,
    knn: Annotated[bool, typer.Option("--knn", help="k-nearest-neighbours: cosine-weighted vote of the labelled images.")] = False,
    probe: Annotated[bool, typer.Option("--probe", help="Linear probe: logistic regression, C chosen by cross-validation.")] = False,
    head: Annotated[bool, typer.Option("--head", help="The fine-tuned head saved by `vecsearch finetune`.")] = False,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="Neighbours for --knn.")] = DEFAULT_K,
    name: Annotated[Optional[str], typer.Option(help="Classifier name to save or use (default: its kind; with IMAGE: the newest).", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Write the confusion matrix as a PNG.", show_default=False)] = None,
    index: IndexOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train, evaluate and apply classifiers on your labels; or classify one IMAGE."""
    with errors_to_exit():
        chosen = [kind for kind, flag in (("knn", knn), ("probe", probe), ("head", head)) if flag]
        if len(chosen) > 1:
            raise VecsearchError("Choose one of --knn, --probe, --head.")
        kind = chosen[0] if chosen else None
        if image is not None:
            if plot is not None:
                raise VecsearchError("--plot goes with training (no IMAGE).")
            with open_index(index, create=False) as ix:
                result = ix.classify(image, name=name, kind=kind, top=DEFAULT_TOP)
            if json_out:
                print_json(result.to_dict())
                return
            by = result.classifier if result.classifier == result.kind else f"{result.classifier}, {result.kind}"
            say(f"{result.label}  {result.confidence:.4f}  ({by})")
            for t in result.top[1:]:
                say(f"  {t['label']}  {t['confidence']:.4f}")
            return
        if kind is None:
            raise VecsearchError("Choose --knn, --probe or --head (or give an IMAGE to classify).")
        with open_index(index, create=False) as ix:
            if kind == "head":
                result = ix.apply_classifier(name, kind="head")
            else:
                result = ix.train_classifier(kind, k=k, name=name)
        metrics = result.metrics
        if plot is not None and metrics.get("confusion"):
            from ..plots import confusion_matrix

            confusion_matrix(metrics["classes"], metrics["confusion"], plot,
                             title=f"{result.name}: accuracy {metrics['accuracy']:.3f}")
        if json_out:
            print_json(result.to_dict() | {"plot": str(plot) if plot else None})
            return
        _print_result(result, plot)


def _print_result(result, plot: Path | None) -> None:
    m = result.metrics
    what = {"knn": f"k-NN (k={result.params.get('k')})", "probe": f"linear probe (C={result.params.get('C')})",
            "head": "fine-tuned head"}[result.kind]
    ev = result.evaluation
    if ev is not None:
        say(f"{what} saved as {result.name!r}; evaluated on {ev.method}: {ev.n_train} train, {ev.n_test} test images")
    else:
        say(f"{what} {result.name!r} (evaluated when trained)")
    if "accuracy" in m:
        say(f"accuracy  {m['accuracy']:.4f}")
    report = m.get("report")
    if report:
        classes = m["classes"]
        width = max(len("class"), *(len(c) for c in classes))
        say()
        say(f"{'class':<{width}}  precision  recall      f1  support")
        for c in classes:
            r = report[c]
            say(f"{c:<{width}}  {r['precision']:9.3f}  {r['recall']:6.3f}  {r['f1-score']:6.3f}  {int(r['support']):7d}")
        say()
        say("confusion matrix (rows: true, columns: predicted)")
        cw = max(3, *(len(c) for c in classes)) + 1
        say(" " * width + "".join(f"{c:>{cw}}" for c in classes))
        for c, row in zip(classes, m["confusion"]):
            say(f"{c:<{width}}" + "".join(f"{v:>{cw}}" for v in row))
    if plot is not None and m.get("confusion"):
        say(f"confusion matrix written to {plot}")
    preds = result.predictions
    if result.skipped:
        warn(f"skipped {result.skipped} prediction(s): their images were removed meanwhile by another indexer")
    say()
    if not preds:
        say("No unlabelled images to predict.")
        return
    say(f"Predicted {len(preds)} unlabelled images (stored under {result.name!r}):")
    for p in preds[:SHOWN_PREDICTIONS]:
        say(f"  {p['label']}  {p['confidence']:.4f}  {p['path']}")
    if len(preds) > SHOWN_PREDICTIONS:
        say(f"  ... and {len(preds) - SHOWN_PREDICTIONS} more (--json for all)")


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
        for r in rows:
            acc = r["metrics"].get("accuracy")
            acc_s = f"accuracy {acc:.4f}" if isinstance(acc, (int, float)) else ""
            say(f"{r['name']:<16} {r['kind']:<6} {r['created_at']}  {acc_s}")
