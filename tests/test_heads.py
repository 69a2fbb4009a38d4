"""Stage two on generated features with known answers, and the run_head.py CLI."""

import csv
import json
import os
import warnings

import joblib
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from benchmarks.c_sweep import grid_search_curve
from features.store import FeatureFileError
from pipeline.affine import HeadError, load_affine
from pipeline.head_maths import best_C
from pipeline.heads import C_GRID, HeadTrainingError, affine_of, choose_C, cv_splits, make_estimator, sweep_jobs
from pipeline.predict_features import predict_split
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import blobs, run_cli, write_feature_file

CLASSES3 = ["cat", "dog", "fox"]


@pytest.fixture
def blob_file(tmp_path):
    Xtr, ytr = blobs(30, 3, 16, seed=0)
    Xva, yva = blobs(10, 3, 16, seed=1)
    return write_feature_file(str(tmp_path / "blobs.h5"), {"train": (Xtr, ytr), "val": (Xva, yva)}, CLASSES3)


@pytest.mark.parametrize("clf", ["logreg", "svm", "linear"])
def test_each_classifier_learns_separable_blobs(blob_file, tmp_path, clf):
    result = train_head(HeadConfig(blob_file, str(tmp_path / clf), clf=clf, n_jobs=1))
    r = result.report
    assert r["splits"]["val"]["accuracy"] >= 0.95 and r["cv_score"] >= 0.95
    assert r["C"] in [c["C"] for c in r["cv_curve"]] and r["cv_folds"] == 5
    saved = json.load(open(tmp_path / clf / "report.json"))
    assert saved["splits"]["val"]["confusion_matrix"] == r["splits"]["val"]["confusion_matrix"]
    assert set(saved) >= {"clf", "C", "cv_score", "fit_seconds", "splits"}
    written = set(os.listdir(tmp_path / clf)) - {"confusion_val.png"}  # the PNG needs the plot extra
    assert written == {"estimator.joblib", "head.json", "head.npz", "report.json"}


@pytest.mark.parametrize("clf", ["logreg", "svm", "linear"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_affine_map_reproduces_decision_function(clf, n_classes):
    X, y = blobs(20, n_classes, 12, seed=3, spread=4.0)
    est = make_estimator(clf, 0.5, None, 0)
    est = est.fit(X, y)
    W, b = affine_of(est, n_classes)
    scores = est.decision_function(X)
    logits = X @ W.T + b
    if scores.ndim == 1:  # binary scikit-learn: one score = logit difference
        np.testing.assert_allclose(logits[:, 1] - logits[:, 0], scores, rtol=1e-9, atol=1e-9)
    else:
        np.testing.assert_allclose(logits, scores, rtol=1e-9, atol=1e-9)
    assert (logits.argmax(1) == est.predict(X)).all()


def test_saved_head_round_trips_and_predict_matches(blob_file, tmp_path):
    out = str(tmp_path / "h")
    r = train_head(HeadConfig(blob_file, out, clf="logreg", n_jobs=1)).report
    head = load_affine(out)
    assert head.classes == CLASSES3 and head.W.shape == (3, 16)
    pred = predict_split(out, blob_file, "val", str(tmp_path / "p.csv"))
    assert pred["accuracy"] == pytest.approx(r["splits"]["val"]["accuracy"])
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 30 and set(rows[0]) == {"path", "true", "predicted", "prob_cat", "prob_dog", "prob_fox"}
    assert abs(sum(float(rows[0][f"prob_{c}"]) for c in CLASSES3) - 1) < 1e-5


def test_cv_never_sees_val_rows(tmp_path):
    Xtr, ytr = blobs(20, 3, 8, seed=0, spread=6.0)
    a = write_feature_file(str(tmp_path / "a.h5"), {"train": (Xtr, ytr), "val": blobs(10, 3, 8, seed=5)}, CLASSES3)
    garbage = (np.random.default_rng(9).normal(size=(30, 8)) * 1e3, np.repeat([2, 1, 0], 10))
    b = write_feature_file(str(tmp_path / "b.h5"), {"train": (Xtr, ytr), "val": garbage}, CLASSES3)
    ra = train_head(HeadConfig(a, str(tmp_path / "ha"), n_jobs=1)).report
    rb = train_head(HeadConfig(b, str(tmp_path / "hb"), n_jobs=1)).report
    assert ra["cv_curve"] == rb["cv_curve"] and ra["C"] == rb["C"]
    assert ra["splits"]["val"]["accuracy"] != rb["splits"]["val"]["accuracy"]


def test_views_of_one_image_stay_in_one_fold():
    y = np.repeat(np.arange(3), 12 * 3)          # 12 images per class, 3 rows (views) each
    groups = np.repeat(np.arange(36), 3)
    clean = np.tile([True, False, False], 36)
    for train_rows, test_rows in cv_splits(y, groups, clean, 4, seed=0):
        assert not set(groups[train_rows]) & set(groups[test_rows])
        assert clean[test_rows].all()


def test_training_with_views_uses_all_rows(tmp_path):
    X, y = blobs(40, 2, 6, seed=2)
    path = write_feature_file(str(tmp_path / "v.h5"), {"train": (X, y)}, ["a", "b"], views={"train": 3})
    result = train_head(HeadConfig(path, str(tmp_path / "h"), n_jobs=1))
    assert result.report["train_rows"] == 80 and result.report["train_images"] == 20
    assert result.report["augmented_views_used"] and result.report["splits"] == {}
    assert any("only the cross-validated estimate" in n for n in result.notes)


def test_few_samples_reduce_folds_with_warning(tmp_path):
    X, y = blobs(10, 2, 4, seed=0)
    X, y = X[:13], y[:13]  # class 1 has 3 images
    path = write_feature_file(str(tmp_path / "f.h5"), {"train": (X, y)}, ["a", "b"])
    result = train_head(HeadConfig(path, str(tmp_path / "h"), n_jobs=1))
    assert result.report["cv_folds"] == 3
    assert any("using 3 folds instead of 5" in n for n in result.notes)


def test_bad_training_data_is_refused(tmp_path):
    X, y = blobs(5, 2, 4, seed=0)
    one = write_feature_file(str(tmp_path / "one.h5"), {"train": (X, np.zeros_like(y))}, ["a", "b"])
    with pytest.raises(HeadTrainingError, match="single class"):
        train_head(HeadConfig(one, str(tmp_path / "h1")))
    Xn = X.copy()
    Xn[0, 1], Xn[3, 2], Xn[3, 0] = np.nan, np.inf, -np.inf
    nan = write_feature_file(str(tmp_path / "nan.h5"), {"train": (Xn, y)}, ["a", "b"])
    with pytest.raises(HeadTrainingError, match="3 NaN/inf values in 2 rows"):
        train_head(HeadConfig(nan, str(tmp_path / "h2")))
    missing = write_feature_file(str(tmp_path / "m.h5"), {"train": (X, y)}, ["a", "b", "c"])
    with pytest.raises(HeadTrainingError, match="without training rows: c"):
        train_head(HeadConfig(missing, str(tmp_path / "h3")))
    with pytest.raises(ValueError, match="linear only"):
        train_head(HeadConfig(missing, str(tmp_path / "h4"), clf="svm", init="imagenet"))


def test_head_refuses_features_of_another_backbone_or_class_list(blob_file, tmp_path):
    out = str(tmp_path / "h")
    train_head(HeadConfig(blob_file, out, n_jobs=1))
    Xva, yva = blobs(10, 3, 16, seed=1)
    other_bb = write_feature_file(str(tmp_path / "o.h5"), {"train": (Xva, yva), "val": (Xva, yva)}, CLASSES3, backbone="resnet18")
    with pytest.raises(HeadError, match="backbone"):
        predict_split(out, other_bb, "val", None)
    other_cls = write_feature_file(str(tmp_path / "c.h5"), {"train": (Xva, yva), "val": (Xva, yva)}, ["cat", "dog", "owl"])
    with pytest.raises(HeadError, match="classes"):
        predict_split(out, other_cls, "val", None)


def test_tampered_head_is_refused(blob_file, tmp_path):
    out = str(tmp_path / "h")
    train_head(HeadConfig(blob_file, out, n_jobs=1))
    with open(os.path.join(out, "head.npz"), "r+b") as fh:
        fh.seek(-20, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(HeadError, match="do not match the hash"):
        load_affine(out)


def test_kernel_svm_is_marked_not_fusable(blob_file, tmp_path):
    out = str(tmp_path / "rbf")
    r = train_head(HeadConfig(blob_file, out, clf="svm", kernel="rbf", n_jobs=1)).report
    assert r["clf"] == "svm-rbf" and r["fusable"] is False and r["splits"]["val"]["accuracy"] >= 0.9
    with pytest.raises(HeadError, match="not linear"):
        load_affine(out)
    assert predict_split(out, blob_file, "val", None)["accuracy"] == pytest.approx(r["splits"]["val"]["accuracy"])


def test_cli_fit_predict_and_errors(blob_file, tmp_path):
    head = str(tmp_path / "cli_head")
    r = run_cli("run_head.py", "--features", blob_file, "--clf", "svm", "--out", head, "--n-jobs", "1")
    assert r.returncode == 0, r.stderr
    assert "val: accuracy" in r.stdout and "precision" in r.stdout
    p = run_cli("run_head.py", "predict", "--head", head, "--features", blob_file, "--out", str(tmp_path / "p.csv"))
    assert p.returncode == 0 and "accuracy" in p.stdout and os.path.exists(tmp_path / "p.csv")
    bad = run_cli("run_head.py", "--features", blob_file, "--clf", "tree")
    assert bad.returncode == 2 and "'tree' is not one of" in bad.stderr
    missing = run_cli("run_head.py", "--features", str(tmp_path / "none.h5"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    partial = tmp_path / "p.h5.partial"
    partial.write_bytes(b"")
    incomplete = run_cli("run_head.py", "--features", str(tmp_path / "p.h5"))
    assert incomplete.returncode == 2 and "partial file exists" in incomplete.stderr


def test_fixed_C_and_class_weight(blob_file, tmp_path):
    r = train_head(HeadConfig(blob_file, str(tmp_path / "h"), C=0.3, class_weight="balanced")).report
    assert r["C"] == 0.3 and r["cv_score"] is None and r["class_weight"] == "balanced"
    fitted = joblib.load(os.path.join(str(tmp_path / "h"), "estimator.joblib"))[-1]  # what was used, not only reported
    assert fitted.C == 0.3 and fitted.class_weight == "balanced"
    with pytest.raises(FeatureFileError):
        train_head(HeadConfig(str(tmp_path / "missing.h5"), str(tmp_path / "h2")))


def test_near_constant_features_do_not_get_huge_weights():
    from pipeline.heads import FlooredScaler

    X, y = blobs(30, 3, 8, seed=4)
    X = np.column_stack([X, 0.5 + 1e-6 * np.random.default_rng(0).normal(size=len(y))])  # a unit that barely moves
    scaler = FlooredScaler().fit(X)
    assert scaler.scale_[-1] == pytest.approx(0.1 * np.median(scaler.scale_[:-1].tolist() + [1e-6]), rel=1e-6)
    est = make_estimator("logreg", 100.0, None, 0).fit(X, y)
    W, _ = affine_of(est, 3)
    # An unfloored StandardScaler would divide that column's weight by ~1e-6.
    assert np.abs(W[:, -1]).max() < 10 * np.abs(W[:, :-1]).max()


def test_torch_linear_head_is_a_scikit_learn_classifier():
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import NotFittedError

    from pipeline.heads import TorchLinearHead

    X, y = blobs(15, 3, 6, seed=5, spread=3.0)
    labels = np.array(["cat", "dog", "fox"])[y]  # classes_ come from the data, whatever they are
    head = TorchLinearHead(C=0.5, epochs=50, class_weight="balanced")
    with pytest.raises(NotFittedError):
        head.predict(X)
    twin = clone(head)
    assert is_classifier(head) and twin.get_params() == head.get_params() and not hasattr(twin, "coef_")
    head.fit(X, labels)
    assert list(head.classes_) == ["cat", "dog", "fox"] and head.coef_.shape == (3, 6) and head.intercept_.shape == (3,)
    assert head.score(X, labels) >= 0.9 and set(head.predict(X)) <= set(head.classes_)
    np.testing.assert_allclose(clone(head).fit(X, labels).coef_, head.coef_)  # deterministic
    with pytest.raises(ValueError, match="init has shape"):
        TorchLinearHead(init=(np.zeros((2, 6)), np.zeros(2))).fit(X, labels)


def test_C_sweep_is_scikit_learns_grid_search_with_image_folds(blob_file):
    """The sweep's curve equals a hand-run of the same folds, and ties go to the smaller C."""
    from pipeline.head_maths import best_C

    Xtr, ytr = blobs(30, 3, 16, seed=0)
    groups, clean = np.arange(len(ytr)), np.ones(len(ytr), bool)
    grid = np.array([1e-3, 1e-1, 10.0])
    cv = choose_C(make_estimator("logreg", 1.0, None, 0), Xtr, ytr, groups, clean, 5, 0, 1, grid=grid)
    hand = {}
    for C, score in cv.grid:
        by_hand = [make_estimator("logreg", C, None, 0).fit(Xtr[tr], ytr[tr]).score(Xtr[te], ytr[te])
                   for tr, te in cv_splits(ytr, groups, clean, 5, 0)]
        hand[C] = float(np.mean(by_hand))
        assert score == pytest.approx(hand[C])
    top = max(hand.values())
    assert cv.C == min(C for C, score in hand.items() if score >= top - 1e-12)  # from the hand-run curve
    assert best_C([(0.1, 0.9), (1.0, 0.95), (10.0, 0.95)]) == (1.0, 0.95)


def test_estimator_is_unpickled_only_when_its_hash_matches(blob_file, tmp_path):
    out = str(tmp_path / "rbf")
    train_head(HeadConfig(blob_file, out, clf="svm", kernel="rbf", C=1.0))
    assert predict_split(out, blob_file, "val", None)["accuracy"] >= 0.95
    with open(os.path.join(out, "estimator.joblib"), "ab") as fh:
        fh.write(b"\0")  # any change, even one a pickle reader would ignore
    r = run_cli("run_head.py", "predict", "--head", out, "--features", blob_file)
    assert r.returncode == 2 and "do not match the hash" in r.stderr and "Traceback" not in r.stderr
    meta = json.load(open(os.path.join(out, "head.json")))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(out, "head.json"), "w"))
    r = run_cli("run_head.py", "predict", "--head", out, "--features", blob_file)
    assert r.returncode == 2 and "head format version 99 is not supported" in r.stderr


def test_small_sweeps_run_serially_unless_asked():
    assert sweep_jobs(None, 245, 1280) == 1  # hymenoptera: worker start-up would cost more than the sweep
    assert sweep_jobs(None, 1000, 1280) == -1
    assert sweep_jobs(2, 245, 1280) == 2


def assert_same_sweep(X: np.ndarray, y: np.ndarray, groups: np.ndarray, clean: np.ndarray, n_jobs: int = 1) -> None:
    ours = choose_C(make_estimator("logreg", 1.0, None, 0), X, y, groups, clean, 5, 0, n_jobs)
    reference = grid_search_curve(X, y, groups, clean)
    assert ours.C == best_C(reference)[0]
    assert [C for C, _ in ours.grid] == pytest.approx([C for C, _ in reference])
    assert [s for _, s in ours.grid] == pytest.approx([s for _, s in reference], abs=1e-9)


@pytest.mark.parametrize("n_per_class, n_classes, dim, spread", [(30, 2, 64, 12.0), (40, 5, 128, 12.0), (25, 10, 256, 12.0)])
def test_sweep_gives_the_grid_search_curve_and_C(n_per_class, n_classes, dim, spread):
    X, y = blobs(n_per_class, n_classes, dim, seed=3, spread=spread)
    assert_same_sweep(X, y, np.arange(len(y)), np.ones(len(y), bool))
    curve = grid_search_curve(X, y, np.arange(len(y)), np.ones(len(y), bool))
    assert min(s for _, s in curve) < max(s for _, s in curve)  # the curve has a choice to make


def test_benchmarked_fresh_fits_give_the_sweep_curve_and_warm_starts_move_from_it():
    """The benchmark's alternative sweeps start from choose_C's folds, scaling and fits."""
    from benchmarks.c_sweep import _scaled_folds, curve

    X, y = blobs(30, 3, 64, seed=4, spread=12.0)
    groups, clean = np.arange(len(y)), np.ones(len(y), bool)
    ours = choose_C(make_estimator("logreg", 1.0, None, 0), X, y, groups, clean, 5, 0, 1)
    fresh = curve(_scaled_folds(X, y, groups, clean), C_GRID, False)
    assert np.allclose(fresh, ours.grid, rtol=0, atol=1e-12)
    # One L-BFGS iteration per fit: each fit of the warm path visibly starts from the previous C's solution.
    folds, Cs = _scaled_folds(X, y, groups, clean), [1e-3, 1e-2, 1e-1, 1.0]
    by_hand = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for X_train, y_train, X_test, y_test in folds:
            model = make_estimator("logreg", 1.0, None, 0)[-1].set_params(warm_start=True, max_iter=1)
            by_hand.append([np.mean(model.set_params(C=C).fit(X_train, y_train).predict(X_test) == y_test)
                            for C in Cs])
        warm, cold = curve(folds, Cs, True, max_iter=1), curve(folds, Cs, False, max_iter=1)
    assert np.allclose([score for _, score in warm], np.mean(by_hand, axis=0), rtol=0, atol=1e-12)
    assert warm != cold


def test_sweep_in_two_workers_gives_the_same_curve():
    X, y = blobs(30, 3, 64, seed=4, spread=12.0)
    assert_same_sweep(X, y, np.arange(len(y)), np.ones(len(y), bool), n_jobs=2)


@pytest.mark.slow
def test_sweep_gives_the_grid_search_C_on_real_features(hymenoptera_lite0, hymenoptera_lite0_views):
    from features.store import FeatureFile

    for path in (hymenoptera_lite0, hymenoptera_lite0_views):
        with FeatureFile(path) as ff:
            train = ff.read_split("train")
        assert_same_sweep(train.features, train.labels, train.image_index, train.view == 0)
