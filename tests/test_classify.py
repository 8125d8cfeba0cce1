"""User classes, k-NN and the linear probe, checked against scikit-learn on real digits.

The digits are scikit-learn's bundled 8x8 images rendered as RGB PNGs in class folders
(tests/digits.py). The real ResNet50 recipe (seeded random init) runs once per module on
100 images; the fast "tiny" backbone serves where the model is not the point.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from digits import digit_images, write_digits
from helpers import make_image, run
from PIL import Image
from typer.testing import CliRunner

from vecsearch import classify as C
from vecsearch import open_index
from vecsearch.classes import labelled_vectors, rows_from_folder, unlabelled_ids
from vecsearch.cli import app
from vecsearch.errors import BadLabelsError, ClassifierNotFoundError, InputNotFoundError, NoLabelsError

runner = CliRunner()


def _sk_knn(k):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance", algorithm="brute")


def _write_unlabelled(root, first=200, n=10, size=32):
    """Digits from further on in the data set, in a folder with no class structure."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        img = np.round(d.images[i] * (255 / 16)).astype(np.uint8)
        Image.fromarray(img, mode="L").resize((size, size), Image.NEAREST).convert("RGB").save(root / f"u{i:04d}.png")
    return root


# Its tests are all marked slow: a ResNet50 index takes 10-25 s to build here, and an unmarked test
# would pay for it in the fast loop (`-m "not slow"`).
@pytest.fixture(scope="module")
def resnet_digits(tmp_path_factory):
    """ResNet50 (seeded random init) index of 10 digits x 10 (3 of each in test/) + 10 unlabelled."""
    root = tmp_path_factory.mktemp("resnet_digits")
    write_digits(root / "digits", per_class=10, test_per_class=3)
    _write_unlabelled(root / "new")
    ix = open_index(root / "index", backbone="resnet50", weights=None, seed=1)
    ix.add([root / "new"])
    summary = ix.teach(root / "digits")
    assert summary.labelled == 100 and summary.indexed == 100
    yield ix, root
    ix.close()


# -- labels ---------------------------------------------------------------------------
def test_folder_labels_follow_image_dataset_from_directory(tmp_path):
    write_digits(tmp_path / "flat", per_class=2, classes=[3, 7])
    rows = rows_from_folder(tmp_path / "flat")
    assert sorted({(r.label, r.split) for r in rows}) == [("3", None), ("7", None)]
    assert all(r.path.parent.name == r.label for r in rows) and len(rows) == 4
    write_digits(tmp_path / "split", per_class=3, test_per_class=1, classes=[3, 7])
    rows = rows_from_folder(tmp_path / "split")
    assert sorted((r.label, r.split) for r in rows) == [
        ("3", "test"),
        ("3", "train"),
        ("3", "train"),
        ("7", "test"),
        ("7", "train"),
        ("7", "train"),
    ]


@pytest.mark.slow
def test_labelled_vectors_match_the_stored_vectors(resnet_digits):
    ix, root = resnet_digits
    ls = labelled_vectors(ix.store)
    assert len(ls) == 100 and ls.X.shape == (100, 2048) and ls.X.dtype == np.float32
    assert np.all(np.diff(ls.ids) > 0)
    assert sorted(set(ls.y)) == [str(c) for c in range(10)]
    assert (ls.split == "test").sum() == 30 and (ls.split == "train").sum() == 70
    for path, label, split, i in zip(ls.paths, ls.y, ls.split, ls.ids, strict=False):
        assert os.path.basename(os.path.dirname(path)) == label
        assert os.path.basename(os.path.dirname(os.path.dirname(path))) == split
        np.testing.assert_array_equal(ls.X[list(ls.ids).index(i)], ix.vector(int(i)))
    np.testing.assert_allclose(np.linalg.norm(ls.X, axis=1), 1.0, atol=1e-5)


# -- k-NN -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 5])
def test_knn_equals_sklearn_on_resnet_digits(resnet_digits, k):
    ix, _ = resnet_digits
    result = ix.train_classifier("knn", k=k, name=f"knn{k}")
    ls = labelled_vectors(ix.store)
    tr, te = ls.split != "test", ls.split == "test"
    ref = _sk_knn(k).fit(ls.X[tr].astype(np.float64), ls.y[tr])
    ev = result.evaluation
    assert ev.method == "test split" and ev.n_test == 30 and ev.test_ids == ls.ids[te].tolist()
    np.testing.assert_array_equal(np.array(ev.test_pred), ref.predict(ls.X[te].astype(np.float64)))
    assert ev.accuracy == pytest.approx(ref.score(ls.X[te].astype(np.float64), ls.y[te]))
    # The saved model is refitted on every labelled image and predicts the unlabelled ones.
    full = _sk_knn(k).fit(ls.X.astype(np.float64), ls.y)
    ids, X, _ = ix.store.vectors(unlabelled_ids(ix.store), dim=2048)
    assert len(ids) == 10
    model = ix.classifier(f"knn{k}")[1]
    np.testing.assert_allclose(model.predict_proba(X), full.predict_proba(X.astype(np.float64)), atol=1e-6)
    stored = {p["id"]: (p["label"], p["confidence"]) for p in result.predictions}
    assert [stored[i][0] for i in ids] == full.predict(X.astype(np.float64)).tolist()
    assert {(r[0], r[2]) for r in ix.store.predictions(f"knn{k}")} == {(i, stored[i][0]) for i in ids}


def test_knn_matches_sklearn_on_duplicates_and_small_training_sets():
    """Zero distances take all the weight; k larger than the training set uses all of it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 16)).astype(np.float32)
    y = np.array(list("abcd"))[rng.integers(0, 4, 40)]
    Q = np.vstack([X[:5], X[3] * 2.5, rng.normal(size=(20, 16))]).astype(np.float32)
    for k in (1, 3, 7, 60):
        ours = C.KnnClassifier(k).fit(X, y)
        ref = _sk_knn(min(k, len(X))).fit(X.astype(np.float64), y)
        np.testing.assert_allclose(ours.predict_proba(Q), ref.predict_proba(Q.astype(np.float64)), atol=1e-9)
        np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q.astype(np.float64)))
    # A pickled model (as saved in an index) predicts the same after loading.
    again = pickle.loads(pickle.dumps(ours))
    np.testing.assert_array_equal(again.predict_proba(Q), ours.predict_proba(Q))


# -- linear probe -------------------------------------------------------------------------
def _sk_probe(C_, X, y):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with C._one_blas_thread():  # small matrices; threaded BLAS only slows a busy machine down
        return make_pipeline(StandardScaler(), LogisticRegression(C=C_, max_iter=5000)).fit(X, y)


@pytest.mark.slow
def test_probe_accuracy_close_to_sklearn_logistic_regression_on_resnet_digits(resnet_digits):
    ix, _ = resnet_digits
    result = ix.train_classifier("probe")
    ls = labelled_vectors(ix.store)
    tr, te = ls.split != "test", ls.split == "test"
    chosen = result.evaluation.fit_params[0]["C"]
    assert chosen in C.PROBE_CS
    ref = _sk_probe(chosen, ls.X[tr], ls.y[tr])
    ref_acc = ref.score(ls.X[te], ls.y[te])
    # 30 test images: one image is 3.3 points, so "within 2 points" means the same count.
    assert abs(result.evaluation.accuracy - ref_acc) <= 0.02 + 1e-9, (result.evaluation.accuracy, ref_acc)
    agree = np.mean(np.array(result.evaluation.test_pred) == ref.predict(ls.X[te]))
    assert agree >= 0.9
    report = result.metrics["report"]
    assert set(report) >= {str(c) for c in range(10)} | {"accuracy", "macro avg"}
    assert np.array(result.metrics["confusion"]).sum() == 30
    assert np.trace(np.array(result.metrics["confusion"])) == round(result.evaluation.accuracy * 30)


def test_probe_chooses_C_like_gridsearch_and_matches_logistic_regression(tmp_path):
    """On more images (tiny backbone): C as GridSearchCV picks it, accuracy within 2 points of sklearn."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    write_digits(tmp_path / "digits", per_class=25, test_per_class=10)
    with open_index(tmp_path / "index", backbone="tiny", weights=None, seed=3) as ix:
        ix.teach(tmp_path / "digits")
        result = ix.train_classifier("probe")
        ls = labelled_vectors(ix.store)
    tr, te = ls.split != "test", ls.split == "test"
    grid = GridSearchCV(
        _sk_probe(1.0, ls.X[:20], ls.y[:20]),
        {"logisticregression__C": list(C.PROBE_CS)},
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        scoring="accuracy",
    )
    with C._one_blas_thread():
        grid.fit(ls.X[tr], ls.y[tr])
    assert result.evaluation.fit_params[0]["C"] == grid.best_params_["logisticregression__C"]
    ref = _sk_probe(grid.best_params_["logisticregression__C"], ls.X[tr], ls.y[tr])
    ref_acc = ref.score(ls.X[te], ls.y[te])
    assert result.evaluation.n_test == 100
    assert abs(result.evaluation.accuracy - ref_acc) <= 0.02 + 1e-9, (result.evaluation.accuracy, ref_acc)
    assert result.evaluation.accuracy > 0.3  # well above the 0.1 of guessing among 10 digits


def test_row_span_projection_changes_no_prediction():
    """The probe's speed-up is exact: the same penalised fit in the row span of the data."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 200))
    y = np.array(list("xyz"))[rng.integers(0, 3, 30)]
    Q = rng.normal(size=(15, 200))
    a = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, tol=1e-10, max_iter=10000)).fit(X, y)
    b = make_pipeline(StandardScaler(), C.RowSpan(), LogisticRegression(C=0.1, tol=1e-10, max_iter=10000)).fit(X, y)
    np.testing.assert_allclose(b.predict_proba(Q), a.predict_proba(Q), atol=1e-5)


# -- folders and CSV ----------------------------------------------------------------------
def _csv_for(root, labels, csv_path, relative=True):
    lines = ["path,label,split"]
    for p, label in sorted(labels.items()):
        split = p.parent.parent.name if p.parent.parent.name in ("train", "test") else ""
        shown = os.path.relpath(p, csv_path.parent) if relative else str(p)
        lines.append(f"{shown},{label},{split}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


@pytest.mark.parametrize("splits", [0, 2])
def test_folder_and_csv_labels_give_the_same_model(tmp_path, splits):
    labels = write_digits(tmp_path / "digits", per_class=6, test_per_class=splits, classes=[0, 1, 7])
    csv_path = _csv_for(tmp_path, labels, tmp_path / "meta" / "labels.csv")
    results = {}
    for source in ("folder", "csv"):
        with open_index(tmp_path / f"index-{source}", backbone="tiny", weights=None, seed=7) as ix:
            summary = ix.teach(tmp_path / "digits" if source == "folder" else csv_path)
            assert summary.kind == source and summary.labelled == 18
            ls = labelled_vectors(ix.store)
            knn = ix.train_classifier("knn", k=3)
            probe = ix.train_classifier("probe")
            Q = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
            results[source] = (
                ls.paths,
                ls.y.tolist(),
                ls.split.tolist(),
                ls.X,
                knn.evaluation.test_pred,
                ix.classifier("knn")[1].predict_proba(Q),
                probe.evaluation.test_pred,
                ix.classifier("probe")[1].predict_proba(Q),
                knn.metrics["method"],
            )
    a, b = results["folder"], results["csv"]
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    np.testing.assert_array_equal(a[3], b[3])
    assert a[4] == b[4] and a[6] == b[6] and a[8] == b[8]
    assert a[8] == ("test split" if splits else "holdout 25%")
    np.testing.assert_array_equal(a[5], b[5])
    np.testing.assert_allclose(a[7], b[7], atol=1e-12)


def test_relabelled_path_keeps_its_label_when_re_embedded(tmp_path, tiny_index):
    labels = write_digits(tmp_path / "digits", per_class=3, classes=[1, 2])
    tiny_index.teach(tmp_path / "digits")
    path = sorted(labels)[0]
    old = tiny_index.store.image_by_path(str(path)).id
    Image.open(path).transpose(Image.FLIP_LEFT_RIGHT).save(path)  # new content, same path
    tiny_index.add([tmp_path / "digits"])
    new = tiny_index.store.image_by_path(str(path)).id
    assert new != old
    assert {i: label for i, label, _, _ in tiny_index.store.user_labels()}[new] == labels[path]
    assert len(labelled_vectors(tiny_index.store)) == 6


def test_linked_class_folder_is_indexed_and_labelled(tmp_path, tiny_index):
    write_digits(tmp_path / "data", per_class=2, classes=[2])
    linked = write_digits(tmp_path / "elsewhere", per_class=2, classes=[1])
    (tmp_path / "data" / "1").symlink_to(tmp_path / "elsewhere" / "1", target_is_directory=True)
    summary = tiny_index.teach(tmp_path / "data")
    assert summary.failed == [] and summary.labelled == 4 and summary.counts == {"1": {"": 2}, "2": {"": 2}}
    # stored under the link, as found in the class folder: not resolved to the folder it points at
    assert {str(tmp_path / "data" / "1" / os.path.basename(p)) for p in linked} <= set(labelled_vectors(tiny_index.store).paths)
    assert not any(p.startswith(str(tmp_path / "elsewhere")) for p in tiny_index.store.records())


# -- saved classifiers and one image ----------------------------------------------------------
def test_classify_one_image_reuses_the_saved_model(tmp_path, tiny_index):
    write_digits(tmp_path / "digits", per_class=5, classes=[0, 1, 2])
    tiny_index.teach(tmp_path / "digits")
    tiny_index.train_classifier("knn", k=3)
    tiny_index.train_classifier("probe")
    assert [r["name"] for r in tiny_index.classifiers()][0] == "probe"
    new = _write_unlabelled(tmp_path / "new", first=300, n=2)
    img = sorted(new.iterdir())[0]
    x = tiny_index.embed([img])[0]
    for name in ("knn", "probe"):
        model = tiny_index.classifier(name)[1]
        proba = model.predict_proba(x[None])[0]
        got = tiny_index.classify(img, name=name)
        assert got.label == model.classes_[np.argmax(proba)] and got.confidence == pytest.approx(proba.max(), abs=1e-6)
        assert got.path == str(img.resolve()) and got.top[0] == {"label": got.label, "confidence": got.confidence}
    assert tiny_index.classify(img).classifier == "probe"  # newest by default
    assert tiny_index.store.image_by_path(str(img.resolve())) is None  # predicting does not index
    with pytest.raises(ClassifierNotFoundError, match="nope"):
        tiny_index.classifier("nope")[1]


# -- bad input ------------------------------------------------------------------------------
def test_bad_label_sets_raise_clear_errors(tmp_path, tiny_index):
    write_digits(tmp_path / "plain", per_class=2, classes=[4])
    tiny_index.add([tmp_path / "plain"])
    with pytest.raises(NoLabelsError, match="vecsearch teach"):
        tiny_index.train_classifier("knn")
    write_digits(tmp_path / "one", per_class=4, classes=[5])
    tiny_index.teach(tmp_path / "one")
    with pytest.raises(BadLabelsError, match="one class"):
        tiny_index.train_classifier("probe")
    write_digits(tmp_path / "single", per_class=3, classes=[5, 6])
    for p in sorted((tmp_path / "single" / "6").iterdir())[1:]:
        p.rename(tmp_path / p.name)
    tiny_index.teach(tmp_path / "single", replace=True)
    with pytest.raises(BadLabelsError, match="6 have a single image"):
        tiny_index.train_classifier("knn")
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\nsingle/5/nothere.png,5\n/no/such/file.jpg,6\n")
    with pytest.raises(InputNotFoundError, match="nothere.png.*file.jpg"):
        tiny_index.teach(csv_path)


def test_wrong_kind_or_damaged_file_is_a_message(tmp_path, tiny_index, index_dir):
    write_digits(tmp_path / "digits", per_class=3, classes=[0, 1])
    tiny_index.teach(tmp_path / "digits")
    tiny_index.train_classifier("knn", k=1)
    with pytest.raises(ClassifierNotFoundError, match="'knn' is a knn classifier, not head"):
        tiny_index.classifier("knn", kind="head")[0]
    assert tiny_index.classifier("knn", kind="knn")[0]["name"] == "knn"
    img = sorted((tmp_path / "digits" / "0").iterdir())[0]
    tiny_index.close()
    for args in (("classify", "--head", "--name", "knn"), ("classify", img, "--probe", "--name", "knn")):
        r = _cli(*args, "--index", index_dir)
        assert r.exit_code == 1 and "is a knn classifier" in r.output and "Traceback" not in r.output, r.output
    (index_dir / "classifiers" / "knn.pkl").write_bytes(b"not a pickle")
    r = _cli("classify", img, "--index", index_dir)
    assert r.exit_code == 1 and "cannot be read" in r.output and "Traceback" not in r.output, r.output


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    index = tmp_path / "index"
    write_digits(tmp_path / "one", per_class=3, classes=[2])
    r = _cli("teach", tmp_path / "one", "--index", index, "--backbone", "tiny", "--weights", "none", "--seed", "1", "-q")
    assert r.exit_code == 0, r.output
    for args, needle in [
        (("classify", "--knn"), "Only one class"),
        (("classify",), "Choose --knn, --probe, --head or --zero-shot"),
        (("classify", "--knn", "--probe"), "Choose one of"),
        (("classify", "--head"), "vecsearch finetune"),
        (("classify", tmp_path / "one" / "2" / "0002.png"), "No trained classifier"),
    ]:
        r = _cli(*args, "--index", index)
        assert r.exit_code == 1, (args, r.output)
        assert needle in r.output and "Traceback" not in r.output, (args, r.output)
    bad = tmp_path / "bad.csv"
    bad.write_text("one/2/0002.png,2\nmissing/a.png,3\n")
    r = _cli("teach", bad, "--index", index)
    assert r.exit_code == 1 and "missing/a.png" in r.output and "Traceback" not in r.output
    empty = tmp_path / "empty-index"
    _write_unlabelled(tmp_path / "u", n=3)
    assert _cli("index", tmp_path / "u", "--index", empty, "--backbone", "tiny", "--weights", "none", "-q").exit_code == 0
    r = _cli("classify", "--probe", "--index", empty)
    assert r.exit_code == 1 and "No labelled images" in r.output and "vecsearch teach" in r.output


def test_cli_teach_classify_json_and_plot(tmp_path):
    index = tmp_path / "index"
    write_digits(tmp_path / "digits", per_class=6, test_per_class=2, classes=[0, 1, 2])
    _write_unlabelled(tmp_path / "new", first=400, n=4)
    assert _cli("index", tmp_path / "new", "--index", index, "--backbone", "tiny", "--weights", "none", "-q").exit_code == 0
    r = _cli("teach", tmp_path / "digits", "--index", index, "--json")
    assert r.exit_code == 0, r.output
    taught = json.loads(r.output)
    assert taught["labelled"] == 18 and taught["counts"] == {c: {"test": 2, "train": 4} for c in "012"}
    r = _cli("teach", tmp_path / "digits", "--index", index)
    assert r.exit_code == 0 and "Labelled 18 images" in r.output and "0 newly indexed" in r.output
    plot = tmp_path / "cm.png"
    r = _cli("classify", "--knn", "--k", 3, "--plot", plot, "--json", "--index", index)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kind"] == "knn" and data["evaluation"]["method"] == "test split" and data["evaluation"]["n_test"] == 6
    assert data["metrics"]["classes"] == ["0", "1", "2"] and len(data["predictions"]) == 4
    assert set(data["metrics"]["report"]["1"]) >= {"precision", "recall", "f1-score", "support"}
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 100
    r = _cli("classify", "--probe", "--index", index)
    assert r.exit_code == 0, r.output
    for needle in ("linear probe", "accuracy", "precision", "confusion matrix", "Predicted 4 unlabelled images"):
        assert needle in r.output, r.output
    img = sorted((tmp_path / "new").iterdir())[0]
    r = _cli("classify", img, "--knn", "--json", "--index", index)
    assert r.exit_code == 0, r.output
    one = json.loads(r.output)
    stored = {p["path"]: p["label"] for p in data["predictions"]}
    assert one["classifier"] == "knn" and one["label"] == stored[str(img.resolve())]
    r = _cli("classifiers", "--json", "--index", index)
    assert [c["name"] for c in json.loads(r.output)["classifiers"]] == ["probe", "knn"]


def test_every_new_command_has_help():
    for cmd in ("teach", "classify", "classifiers"):
        r = _cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_digits_helper_is_deterministic(tmp_path):
    a = write_digits(tmp_path / "a", per_class=2, classes=[8])
    b = write_digits(tmp_path / "b", per_class=2, classes=[8])
    for (pa, la), (pb, lb) in zip(sorted(a.items()), sorted(b.items()), strict=False):
        assert pa.name == pb.name and la == lb == "8"
        assert np.array_equal(np.asarray(Image.open(pa)), np.asarray(Image.open(pb)))
    img = np.asarray(Image.open(sorted(a)[0]))
    assert img.shape == (32, 32, 3) and (img[..., 0] == img[..., 1]).all()
    first = digit_images(1, [8])[0][2]
    np.testing.assert_array_equal(img[::4, ::4, 0], first)


def test_classify_head_applies_the_saved_fine_tuned_head(tmp_path):
    from vecsearch import HeadParams

    index = tmp_path / "index"
    write_digits(tmp_path / "digits", per_class=6, test_per_class=2, classes=[0, 1, 2])
    _write_unlabelled(tmp_path / "new", first=500, n=3)
    with open_index(index, backbone="tiny", weights=None, seed=5) as ix:
        ix.add([tmp_path / "new"])
        ix.teach(tmp_path / "digits")
        ix.finetune(params=HeadParams(epochs=2))
        ids, X, _ = ix.store.vectors(unlabelled_ids(ix.store), dim=32)
        head = ix.classifier()[1]
        expected = [
            (str(head.classes_[j]), float(p[j]))
            for p, j in zip(head.predict_proba(X), head.predict_proba(X).argmax(1), strict=False)
        ]
    r = _cli("classify", "--head", "--json", "--plot", tmp_path / "cm.png", "--index", index)
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["kind"] == "head" and data["evaluation"] is None
    got = [(p["label"], p["confidence"]) for p in sorted(data["predictions"], key=lambda p: p["id"])]
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], atol=1e-5)


# -- writes racing a concurrent indexer -------------------------------------------------------
def test_predictions_and_labels_skip_images_an_indexer_removed_meanwhile(tmp_path, tiny_index, monkeypatch):
    from vecsearch import classifiers

    write_digits(tmp_path / "digits", per_class=4, classes=[0, 1])
    tiny_index.teach(tmp_path / "digits")
    for i in range(3):
        make_image(tmp_path / "new" / f"n{i}.png", 100 + i)
    tiny_index.add([tmp_path / "new"])
    gone = tiny_index.store.image_by_path(str(tmp_path / "new" / "n1.png")).id
    real_predict = classifiers.predict

    def predict_while_an_indexer_deletes(clf, X, dim=None):
        out = real_predict(clf, X, dim)
        tiny_index.store.apply(deletes=[gone])  # what a concurrent `vecsearch index` does
        return out

    monkeypatch.setattr(classifiers, "predict", predict_while_an_indexer_deletes)
    result = tiny_index.train_classifier("knn", k=3)
    assert result.skipped == 1 and len(result.predictions) == 2
    assert gone not in {i for i, *_ in tiny_index.store.predictions("knn")}
    assert tiny_index.store.set_user_labels([(gone, "x", None, "csv")]) == 0


def test_classify_head_without_a_head_points_at_finetune(taught):
    index_dir, _ = taught
    r = run("classify", "--head", "--index", index_dir, ok=False)
    assert r.exit_code == 1 and "`vecsearch finetune`" in r.output and "classify --knn" not in r.output
