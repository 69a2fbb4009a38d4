"""Acceptance: a Kaggle-style copy of hymenoptera runs end to end through the real CLIs.

Train images go flat into ``train/<id>.<ext>`` with ``labels.csv``; val images, their
labels held back, into ``test/`` with a shuffled ``sample_submission.csv``. Extract with
``--labels``, train a head, write a submission, score it against the held-back truth, and
compare with the ImageFolder version of the same images.
"""

import csv
import hashlib
import json
import os
import random
import shutil

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kaggle_hymenoptera(hymenoptera, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kaggle") / "hymenoptera_kaggle")
    rows, truth = [], {}
    for split, part in (("train", "train"), ("val", "test")):
        os.makedirs(os.path.join(root, part))
        for cls in ("ants", "bees"):
            for name in sorted(os.listdir(os.path.join(hymenoptera, split, cls))):
                image_id = hashlib.sha1(f"{split}/{cls}/{name}".encode()).hexdigest()[:12]
                shutil.copyfile(os.path.join(hymenoptera, split, cls, name),
                                os.path.join(root, part, image_id + os.path.splitext(name)[1]))
                if part == "train":
                    rows.append((image_id, cls))
                else:
                    truth[image_id] = cls
    with open(os.path.join(root, "labels.csv"), "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("id", "label")] + sorted(rows))
    ids = sorted(truth)
    random.Random(0).shuffle(ids)
    with open(os.path.join(root, "sample_submission.csv"), "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("id", "ants", "bees")] + [(i, 0.5, 0.5) for i in ids])
    return root, truth, ids


def test_kaggle_layout_end_to_end_matches_the_imagefolder_version(kaggle_hymenoptera, hymenoptera_lite0, tmp_path):
    root, truth, ids = kaggle_hymenoptera
    feats = str(tmp_path / "kaggle.h5")
    # fp32 as in hymenoptera_lite0: the two files must give the same accuracy on any CPU.
    r = run_cli("run_extract.py", "--data", root, "--labels", os.path.join(root, "labels.csv"), "--precision", "fp32",
                "--out", feats, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "train: 245 images, 245 rows, 0 skipped" in r.stdout and "test: 153 images, 153 rows" in r.stdout
    assert "unlabeled split 'test'" in r.stdout
    head = str(tmp_path / "head")
    r = run_cli("run_head.py", "--features", feats, "--clf", "logreg", "--out", head)
    assert r.returncode == 0, r.stderr
    assert "test: 153 unlabeled rows, no metrics" in r.stdout
    submission = str(tmp_path / "submission.csv")
    r = run_cli("run_head.py", "predict", "--head", head, "--features", feats, "--split", "test", "--format",
                "submission", "--template", os.path.join(root, "sample_submission.csv"), "--out", submission)
    assert r.returncode == 0, r.stderr
    with open(submission, encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "ants", "bees"] and [row[0] for row in table[1:]] == ids
    predicted = {row[0]: "ants" if float(row[1]) > float(row[2]) else "bees" for row in table[1:]}
    kaggle_accuracy = sum(predicted[i] == truth[i] for i in ids) / len(ids)

    folder_head = str(tmp_path / "folder_head")
    r = run_cli("run_head.py", "--features", hymenoptera_lite0, "--clf", "logreg", "--out", folder_head)
    assert r.returncode == 0, r.stderr
    folder = json.load(open(os.path.join(folder_head, "report.json")))
    folder_accuracy = folder["splits"]["val"]["accuracy"]
    assert folder_accuracy > 0.9
    # With C chosen by cross-validation, the folds follow the row order (sorted ids here, class folders
    # there), so C may differ: the Kaggle copy must reach the ImageFolder accuracy.
    assert kaggle_accuracy >= folder_accuracy - 0.005

    # The same head on the same images: the Kaggle copy scores what the ImageFolder version scores.
    same_c = str(tmp_path / "head_same_c")
    r = run_cli("run_head.py", "--features", feats, "--clf", "logreg", "--C", str(folder["C"]), "--out", same_c)
    assert r.returncode == 0, r.stderr
    r = run_cli("run_head.py", "predict", "--head", same_c, "--features", feats, "--split", "test", "--format",
                "submission", "--template", os.path.join(root, "sample_submission.csv"), "--out", submission)
    assert r.returncode == 0, r.stderr
    with open(submission, encoding="utf-8") as fh:
        rows = list(csv.reader(fh))[1:]
    same_c_accuracy = sum((("ants" if float(a) > float(b) else "bees") == truth[i]) for i, a, b in rows) / len(rows)
    print(f"kaggle layout {kaggle_accuracy:.4f} (C auto), {same_c_accuracy:.4f} (C={folder['C']:.3g}); "
          f"ImageFolder {folder_accuracy:.4f} (C={folder['C']:.3g})")
    assert abs(same_c_accuracy - folder_accuracy) <= 0.005
