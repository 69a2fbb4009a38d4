"""Unlabeled splits through heads and predictions; submission files for feature files and exported models."""

import csv
import json
import os

import numpy as np
import pytest

from features.extract import ExtractConfig, extract
from pipeline.build_model import BuildConfig, build_model
from pipeline.submission import SubmissionError, build_submission
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import make_kaggle, run_cli


@pytest.fixture(scope="module")
def kaggle_head(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kaggle")
    root = str(tmp / "dogs")
    truth = make_kaggle(root, {"beagle": 8, "dingo": 8, "pug": 8}, {"beagle": 3, "dingo": 3, "pug": 3})
    feats = str(tmp / "f.h5")
    # fp32 on every CPU: the exported model (fp32) is compared with the head on these features.
    extract(ExtractConfig(data_root=root, out_path=feats, backbone="tiny_cnn", weights="none", progress=False,
                          labels=os.path.join(root, "labels.csv"), val_fraction=0.25, precision="fp32"))
    head = str(tmp / "head")
    result = train_head(HeadConfig(feats, head, clf="logreg", n_jobs=1))
    return root, truth, feats, head, result


def _read(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def test_head_reports_no_metrics_for_the_unlabeled_split(kaggle_head):
    _, _, _, head, result = kaggle_head
    report = json.load(open(os.path.join(head, "report.json")))
    assert set(report["splits"]) == {"val"} and report["unlabeled_splits"] == ["test"]
    assert any(n.startswith("test: 9 unlabeled rows, no metrics") for n in result.notes)


def test_predict_submission_follows_the_template(kaggle_head, tmp_path):
    root, truth, feats, head, _ = kaggle_head
    with open(os.path.join(root, "sample_submission.csv"), encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    ids = [r[0] for r in rows[1:]][::-1]  # another row order and another column order than the head's
    template = str(tmp_path / "template.csv")
    with open(template, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_name", "pug", "beagle", "dingo"])
        writer.writerows([[i, 0, 0, 0] for i in ids])
    out = str(tmp_path / "sub.csv")
    r = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--format",
                "submission", "--template", template, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "test: 9 rows, unlabeled, no accuracy, written to" in r.stdout
    table = _read(out)
    assert table[0] == ["image_name", "pug", "beagle", "dingo"] and [row[0] for row in table[1:]] == ids
    probs = np.array([[float(v) for v in row[1:]] for row in table[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    predicted = [table[0][1:][k] for k in probs.argmax(1)]
    assert np.mean([p == truth[i] for p, i in zip(predicted, ids)]) >= 0.9  # tinted classes are easy

    plain = str(tmp_path / "plain.csv")  # no template: id + the head's classes, ids without extension
    r = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--format",
                "submission", "--out", plain)
    assert r.returncode == 0, r.stderr
    rows = _read(plain)
    assert rows[0] == ["id", "beagle", "dingo", "pug"] and {row[0] for row in rows[1:]} == set(truth)
    by_id = {row[0]: [float(v) for v in row[1:]] for row in rows[1:]}
    for row in table[1:]:  # the same probabilities, reordered
        assert by_id[row[0]] == pytest.approx([float(row[2]), float(row[3]), float(row[1])], abs=1e-6)


def test_predict_rows_on_unlabeled_split_and_bad_templates(kaggle_head, tmp_path):
    root, truth, feats, head, _ = kaggle_head
    out = str(tmp_path / "rows.csv")
    r = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--out", out)
    assert r.returncode == 0 and "unlabeled, no accuracy" in r.stdout
    rows = _read(out)
    assert rows[0][:3] == ["path", "true", "predicted"] and all(row[1] == "" for row in rows[1:])
    bad = tmp_path / "bad.csv"
    bad.write_text("id,beagle,poodle\nx,0,0\n")
    r = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--format",
                "submission", "--template", str(bad), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 2 and "not the head's classes" in r.stderr and "poodle" in r.stderr
    assert "Traceback" not in r.stderr


def test_template_ids_without_prediction_are_filled_and_said():
    from pipeline.submission import Template

    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    sub = build_submission(["test/a.jpg", "test/b.jpg"], probs, ["x", "y"],
                           Template("t.csv", "id", ["y", "x"], ["b", "zz", "a"]))
    assert sub.header == ["id", "y", "x"]
    assert sub.rows == [["b", "0.800000", "0.200000"], ["zz", "0.500000", "0.500000"], ["a", "0.100000", "0.900000"]]
    assert any("1 of 3 template ids have no prediction" in n for n in sub.notes)
    named = build_submission(["test/a.jpg"], probs[:1], ["x", "y"], Template("t.csv", "id", ["x", "y"], ["a.jpg"]))
    assert named.rows[0][0] == "a.jpg" and not named.notes  # the template's id form (with extension) is matched
    with pytest.raises(SubmissionError, match="same id 'a'"):
        build_submission(["t/a.jpg", "t/a.png"], probs, ["x", "y"])


def test_exported_model_writes_a_submission(kaggle_head, tmp_path):
    root, truth, feats, head, _ = kaggle_head
    model = str(tmp_path / "model")
    build_model(BuildConfig(head, model), log=lambda *_: None)
    template = os.path.join(root, "sample_submission.csv")
    out = str(tmp_path / "sub.csv")
    r = run_cli("-m pipeline.predict", "--model", model, os.path.join(root, "test"), "--format", "submission",
                "--template", template, "--out", out)
    assert r.returncode == 0, r.stderr
    rows, expected = _read(out), _read(template)
    assert rows[0] == expected[0] and [row[0] for row in rows[1:]] == [row[0] for row in expected[1:]]
    r2 = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--format",
                 "submission", "--template", template, "--out", str(tmp_path / "from_features.csv"))
    assert r2.returncode == 0, r2.stderr
    from_features = np.array([[float(v) for v in row[1:]] for row in _read(str(tmp_path / "from_features.csv"))[1:]])
    exported = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(exported, from_features, atol=1e-4)  # the fused model is the head on these images
    r3 = run_cli("-m pipeline.predict", "--model", model, os.path.join(root, "test"), "--template", template)
    assert r3.returncode == 2 and "apply to --format submission" in r3.stderr


def test_exported_model_turns_phone_photos_upright(kaggle_head, tmp_path):
    from PIL import Image

    from features.images import EXIF_ORIENTATION
    from pipeline.predict import predict_images

    root, truth, feats, head, _ = kaggle_head
    model = str(tmp_path / "model")
    build_model(BuildConfig(head, model), log=lambda *_: None)
    upright = os.path.join(root, "test", sorted(os.listdir(os.path.join(root, "test")))[0])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored turned a quarter, as a phone held upright stores it
    phone = str(tmp_path / "phone.png")
    Image.open(upright).transpose(Image.Transpose.ROTATE_90).save(phone, exif=exif)
    bare = str(tmp_path / "bare.png")
    Image.open(phone).save(bare)  # the same sideways pixels without the tag
    (a, b, c), _ = predict_images(model, [upright, phone, bare], top_k=3)
    assert dict(b.top) == pytest.approx(dict(a.top), abs=1e-6)  # the same decoded pixels, turned back upright
    assert dict(c.top) != pytest.approx(dict(a.top), abs=1e-4)  # without the tag it is seen on its side
