"""The fine-tuned head against scikit-learn's logistic-regression probe; --unfreeze and re-embedding."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from digits import write_digits
from helpers import run, run_json
from typer.testing import CliRunner

from vecsearch import open_index
from vecsearch.cli import app
from vecsearch.errors import BadLabelsError, NoLabelsError, VecsearchError
from vecsearch.finetune import HeadParams, holdout, train_head
from vecsearch.head import load_head

runner = CliRunner()
FAST = HeadParams(epochs=80, patience=10, batch_size=64, learning_rate=3e-3, seed=0)  # converges in the epoch budget


def _probe_accuracy(X_tr, y_tr, X_te, y_te) -> float:
    """The reference: scikit-learn LogisticRegression, raw and standardised; the better one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    raw = LogisticRegression(max_iter=3000).fit(X_tr, y_tr).score(X_te, y_te)
    std = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(X_tr, y_tr).score(X_te, y_te)
    return max(raw, std)


@pytest.fixture(scope="module")
def digits_index(tmp_path_factory):
    """400 rendered sklearn digits (40 per class), labelled by folder, in a tiny-backbone index."""
    base = tmp_path_factory.mktemp("digits")
    write_digits(base / "digits", per_class=40)
    ix = open_index(base / "index", backbone="tiny", weights=None, seed=7)
    ix.teach(base / "digits")
    ix.close()
    return base / "index"


@pytest.mark.slow
def test_head_reaches_probe_accuracy_on_real_features():
    """sklearn's digits as unit vectors: the head must be within 5 points of the probe."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data[:400] / np.linalg.norm(d.data[:400], axis=1, keepdims=True)
    y = np.array([f"d{t}" for t in d.target[:400]])
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    head, history = train_head(X_tr, y_tr, FAST)
    acc = float(np.mean(head.predict(X_te) == y_te))
    probe = _probe_accuracy(X_tr, y_tr, X_te, y_te)
    assert probe > 0.9  # the data is learnable, so the comparison means something
    assert acc >= probe - 0.05, (acc, probe)
    assert list(head.classes_) == sorted(set(y))
    p = head.predict_proba(X_te)
    assert p.shape == (len(X_te), 10) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(history)
    assert len(history["loss"]) <= FAST.epochs


def test_head_architecture_is_the_tutorials():
    X = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    y = np.array(["a", "b"] * 20)
    head, _ = train_head(X, y, HeadParams(epochs=2, units=16))
    kinds = [type(layer).__name__ for layer in head.model.layers]
    assert kinds == ["InputLayer", "Normalization", "Dropout", "Dense", "BatchNormalization", "Dropout", "Dense"]
    assert head.model.layers[3].activation.__name__ == "relu"
    assert head.model.layers[-1].activation.__name__ == "softmax"
    assert head.predict_proba(X[0]).shape == (1, 2)  # one vector is one row
    with pytest.raises(VecsearchError, match="dimensions"):  # not silently reshaped to (1, 8)
        head.predict_proba(X[:2, :4])


@pytest.mark.slow
def test_finetune_index_saves_a_head_classify_can_use(digits_index, tmp_path):
    from vecsearch.classes import labelled_vectors

    with open_index(digits_index, create=False) as ix:
        result = ix.finetune(params=FAST)
        ls = labelled_vectors(ix.store)
        method, tr, te = holdout(ls)
        probe = _probe_accuracy(ls.X[tr], ls.y[tr], ls.X[te], ls.y[te])
        assert method == "holdout 25%" and result.metrics["n_test"] == len(te) == 100
        assert result.metrics["accuracy"] >= probe - 0.05, (result.metrics["accuracy"], probe)
        # The saved file is what `classify --head` loads, and it predicts exactly like the trained head.
        row = ix.classifier("head")[0]
        assert row["kind"] == "head" and row["metrics"]["accuracy"] == result.metrics["accuracy"]
        clf = ix.classifier("head")[1]
        assert list(clf.classes_) == [str(d) for d in range(10)]
        reloaded = load_head(result.path)
        np.testing.assert_allclose(clf.predict_proba(ls.X[te]), reloaded.predict_proba(ls.X[te]), atol=1e-6)
        acc = float(np.mean(clf.predict(ls.X[te]) == ls.y[te]))
        assert acc == pytest.approx(result.metrics["accuracy"])
    with zipfile.ZipFile(result.path) as z:
        assert json.loads(z.read("vecsearch.json"))["classes"] == [str(d) for d in range(10)]


def test_load_head_rejects_other_files(tmp_path):
    bad = tmp_path / "x.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(VecsearchError, match="not a vecsearch head"):
        load_head(bad)
    with pytest.raises(VecsearchError, match="not found"):
        load_head(tmp_path / "missing.keras")


def test_finetune_refuses_missing_or_bad_labels(tiny_index, photos):
    tiny_index.add([photos])
    with pytest.raises(NoLabelsError):
        tiny_index.finetune(params=FAST)
    ids = tiny_index.store.vector_ids()
    tiny_index.store.set_user_labels([(int(i), "only", None, "csv") for i in ids])
    with pytest.raises(BadLabelsError, match="one class"):
        tiny_index.finetune(params=FAST)
    with pytest.raises(VecsearchError, match="Bad classifier name"):  # refused before any training
        tiny_index.finetune(name="no/slash", params=FAST)


@pytest.mark.slow
def test_cli_finetune_plot_json_and_classify_head(digits_index, tmp_path):
    png = tmp_path / "curves.png"
    r = runner.invoke(
        app,
        [
            "finetune",
            "--index",
            str(digits_index),
            "--name",
            "cli_head",
            "--epochs",
            "15",
            "--patience",
            "3",
            "--plot",
            str(png),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["name"] == "cli_head" and data["plot"] == str(png)
    assert 0.0 <= data["metrics"]["accuracy"] <= 1.0 and len(data["history"]["val_loss"]) == data["metrics"]["epochs_run"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = runner.invoke(app, ["classify", "--head", "--name", "cli_head", "--index", str(digits_index), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kind"] == "head"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reembed-into", "{tmp}/new"], "needs --unfreeze"),
        (["--epochs", "0"], "Invalid value"),
        (["--name", "refused", "--unfreeze", "1", "--reembed-into", "{index}"], "must be a new folder"),
    ],
)
def test_cli_finetune_bad_input(digits_index, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, index=digits_index) for a in args]
    r = runner.invoke(app, ["finetune", "--index", str(digits_index), *args])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    with open_index(digits_index, create=False) as ix:  # refused before anything was trained
        assert "refused" not in {c["name"] for c in ix.classifiers()}


def test_cli_finetune_without_labels(tiny_index, photos, index_dir):
    tiny_index.add([photos])
    tiny_index.close()
    r = runner.invoke(app, ["finetune", "--index", str(index_dir)])
    assert r.exit_code == 1 and "No labelled images" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_unfreeze_changes_weights_and_reembeds_into_a_new_index(tmp_path):
    """Tiny backbone, 24 images, 1 epoch: it runs, the weights move, the file builds a usable index."""
    from vecsearch.backbones import load_backbone

    write_digits(tmp_path / "digits", per_class=8, classes=range(3))
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.teach(tmp_path / "digits")
        result = ix.finetune(params=HeadParams(epochs=3, patience=2))
        assert load_head(result.path).classes_.tolist() == ["0", "1", "2"]
        before = ix.backbone.fingerprint
        tuned = ix.unfreeze("head", 2, epochs=1, learning_rate=1e-3, batch_size=8)
        assert tuned["weights_changed"] and tuned["trainable_weights"] == 2  # conv2 kernel + bias
        assert ix.backbone.fingerprint == before  # the index's own backbone is untouched
        bb = load_backbone("tiny", tuned["weights_path"])
        assert bb.fingerprint != before
        orig_ids, orig_vecs, _ = ix.store.vectors()
        orig_paths = [ix.store.image(int(i)).path for i in orig_ids]
        summary = ix.reembed(tuned["weights_path"], tmp_path / "tuned_index", head_path=tuned["head_path"])
        assert summary.indexed == len(orig_ids)
        with pytest.raises(VecsearchError, match="new folder"):
            ix.reembed(tuned["weights_path"], tmp_path / "index")
    with open_index(tmp_path / "tuned_index", create=False) as new:
        assert new.backbone.fingerprint == bb.fingerprint
        assert new.backbone.weights.path.startswith(str((tmp_path / "tuned_index").resolve()))  # its own copy
        # New vectors are the tuned backbone's, checked against plain Keras on the same pixels.
        ids, vecs, _ = new.store.vectors()
        paths = [new.store.image(int(i)).path for i in ids]
        assert sorted(paths) == sorted(orig_paths)
        from vecsearch.images import read_image_file

        pix = np.stack([read_image_file(p, (32, 32)).pixels for p in paths]).astype(np.float32)
        ref = bb.model.predict(pix / 127.5 - 1.0, verbose=0)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(vecs, ref, atol=1e-5)
        old = dict(zip(orig_paths, orig_vecs, strict=False))
        assert not np.allclose(vecs, np.stack([old[p] for p in paths]), atol=1e-4)
        assert sum(1 for _ in new.store.user_labels()) == len(ids)  # labels came along
        assert list(new.classifier("head")[1].classes_) == ["0", "1", "2"]


@pytest.mark.slow
def test_cli_unfreeze_and_reembed(tmp_path):
    write_digits(tmp_path / "digits", per_class=6, classes=range(2))
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=7) as ix:
        ix.teach(tmp_path / "digits")
    r = runner.invoke(
        app,
        [
            "finetune",
            "--index",
            str(tmp_path / "index"),
            "--epochs",
            "2",
            "--unfreeze",
            "2",
            "--unfreeze-epochs",
            "1",
            "--unfreeze-lr",
            "0.01",
            "--reembed-into",
            str(tmp_path / "tuned"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)["tuned"]
    assert t["weights_changed"] and t["reembedded"]["indexed"] == 12
    r = runner.invoke(app, ["stats", "--index", str(tmp_path / "tuned"), "--json"])
    assert json.loads(r.stdout)["weights"].startswith("file ") and json.loads(r.stdout)["vectors"] == 12
    r = runner.invoke(
        app, ["finetune", "--index", str(tmp_path / "index"), "--epochs", "2", "--unfreeze", "2", "--unfreeze-epochs", "1", "-q"]
    )
    assert r.exit_code == 0 and "the index is unchanged" in r.stdout


def test_finetune_hint_names_the_head_and_the_index(taught):
    index_dir, _ = taught
    r = run("finetune", "--name", "tuned", "--epochs", "2", "--index", index_dir, "-q")
    assert f"`vecsearch classify --head --name tuned --index {index_dir}`" in r.stdout
    assert run_json("classify", "--head", "--name", "tuned", "--index", index_dir)["kind"] == "head"
