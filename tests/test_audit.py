"""The data audit on generated data: label issues, duplicates and leaks, outliers, unreadable files, outputs, bad input."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from features.extract import ExtractConfig, extract
from features.store import ConfigMismatch, FeatureFile
from pipeline.affine import HeadError
from pipeline.audit import AuditConfig, AuditError, run_audit
from pipeline.heads import choose_C, cv_splits, make_estimator
from pipeline.phash import dct_hashes
from pipeline.predict_features import softmax
from pipeline.thumbnails import upright_thumbnail
from pipeline.train_head import HeadConfig, train_head
from tests.conftest import blobs, run_cli, write_feature_file

CLASSES = ["a", "b", "c"]
SECTIONS = ["summary", "confusion", "per-class", "top-losses", "label-issues", "duplicates", "outliers", "unreadable"]


def smooth_image(seed: int, label: int, size=(96, 80)) -> Image.Image:
    """A smooth random picture (low-frequency structure, like a photo) tinted by its class."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    arr[..., label % 3] = np.clip(arr[..., label % 3].astype(int) // 3 + 170, 0, 255)
    return Image.fromarray(arr).resize(size, Image.BICUBIC)


def make_audit_dataset(root: str) -> dict:
    """train 3 x 10, val 3 x 4 smooth images, plus a leak, a mirrored leak, a flipped label and an unreadable file."""
    n = 0
    for split, count in (("train", 10), ("val", 4)):
        for label, cls in enumerate(CLASSES):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for i in range(count):
                smooth_image(n, label).save(os.path.join(root, split, cls, f"img_{i:02d}.jpg"), quality=92)
                n += 1
    leak = smooth_image(1000, 0)
    leak.save(os.path.join(root, "val", "a", "unique.jpg"), quality=92)
    leak.resize((77, 64), Image.BICUBIC).save(os.path.join(root, "train", "a", "leak_copy.jpg"), quality=70)
    mirrored = Image.open(os.path.join(root, "val", "b", "img_01.jpg")).transpose(Image.FLIP_LEFT_RIGHT)
    mirrored.resize((80, 67)).save(os.path.join(root, "train", "b", "leak_mirror.jpg"), quality=75)
    smooth_image(2000, 2).save(os.path.join(root, "train", "a", "flipped.jpg"), quality=92)  # a "c" picture in a
    with open(os.path.join(root, "train", "c", "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {"leaks": {("train/a/leak_copy.jpg", "val/a/unique.jpg"), ("train/b/leak_mirror.jpg", "val/b/img_01.jpg")},
            "flipped": "train/a/flipped.jpg", "broken": "train/c/broken.jpg"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """A real tiny_cnn feature file of the generated dataset and its audit."""
    tmp = tmp_path_factory.mktemp("audit")
    truth = make_audit_dataset(str(tmp / "data"))
    features = str(tmp / "f.h5")
    extract(ExtractConfig(data_root=str(tmp / "data"), out_path=features, backbone="tiny_cnn", weights="none",
                          progress=False))
    out = str(tmp / "audit")
    result = run_audit(AuditConfig(features, out, n_jobs=1))
    return {"features": features, "out": out, "result": result, "truth": truth, "data": str(tmp / "data")}


def _csv(out: str) -> list[dict]:
    with open(os.path.join(out, "audit.csv"), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_audit_writes_one_row_per_image_in_csv_and_json(audited):
    rows = _csv(audited["out"])
    with open(os.path.join(audited["out"], "audit.json"), encoding="utf-8") as fh:
        saved = json.load(fh)
    assert len(rows) == len(saved["rows"]) == 30 + 3 + 12 + 1 + 1  # + leaks/flipped in train, val extra, broken
    assert {"path", "split", "label", "predicted", "prob_a", "prob_b", "prob_c", "label_issue_score", "label_issue",
            "suggested_label", "outlier_score", "outlier", "duplicate_group", "leak", "unreadable"} <= set(rows[0])
    readable = [r for r in rows if r["unreadable"] == "False"]
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in CLASSES) - 1) < 1e-4 for r in readable)
    assert saved["summary"]["splits"]["train"]["probabilities"] == "out-of-fold"
    assert saved["summary"]["splits"]["val"]["probabilities"] == "held-out"


def test_leaks_are_grouped_across_splits_and_their_training_copies_excluded(audited):
    rows = {r["path"]: r for r in _csv(audited["out"])}
    for train_copy, original in audited["truth"]["leaks"]:
        assert rows[train_copy]["duplicate_group"] and rows[train_copy]["duplicate_group"] == rows[original]["duplicate_group"]
        assert rows[train_copy]["leak"] == rows[original]["leak"] == "True"
        assert rows[train_copy]["excluded"] == "True" and rows[original]["excluded"] == "False"
    grouped = {p for p, r in rows.items() if r["duplicate_group"]}
    assert grouped == {p for pair in audited["truth"]["leaks"] for p in pair}  # no false pairs among the others
    assert audited["result"].summary["leak_groups"] == 2


def test_flipped_label_is_flagged_with_its_true_class(audited):
    rows = {r["path"]: r for r in _csv(audited["out"])}
    flipped = rows[audited["truth"]["flipped"]]
    assert flipped["label_issue"] == "True" and flipped["suggested_label"] == "c"
    ranked = sorted((r for r in rows.values() if r["split"] == "train" and r["unreadable"] == "False"),
                    key=lambda r: -float(r["label_issue_score"]))
    assert ranked[0]["path"] == audited["truth"]["flipped"]
    with open(os.path.join(audited["out"], "exclude.txt"), encoding="utf-8") as fh:
        listed = [line.strip() for line in fh if not line.startswith("#")]
    assert audited["truth"]["flipped"] in listed and audited["truth"]["broken"] in listed


def test_unreadable_file_is_reported(audited):
    rows = {r["path"]: r for r in _csv(audited["out"])}
    broken = rows[audited["truth"]["broken"]]
    assert broken["unreadable"] == "True" and broken["reason"]
    page = open(os.path.join(audited["out"], "index.html"), encoding="utf-8").read()
    assert audited["truth"]["broken"] in page


def test_report_has_every_section_and_thumbnails_on_disk(audited):
    page = open(os.path.join(audited["out"], "index.html"), encoding="utf-8").read()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    thumbs = [r for r in _csv(audited["out"]) if r["thumbnail"]]
    assert thumbs and all(os.path.exists(os.path.join(audited["out"], r["thumbnail"])) for r in thumbs)
    for r in thumbs:
        with Image.open(os.path.join(audited["out"], r["thumbnail"])) as img:
            assert max(img.size) <= 160


def test_out_of_fold_scores_are_the_sweeps_own_folds():
    X, y = blobs(20, 3, 6, seed=7, spread=5.0)
    groups, clean = np.arange(len(y)), np.ones(len(y), bool)
    cv = choose_C(make_estimator("logreg", 1.0, None, 0), X, y, groups, clean, 4, 0, 1, keep_scores=True)
    assert np.isfinite(cv.oof_scores).all()
    per_fold = [(softmax(cv.oof_scores[te]).argmax(1) == y[te]).mean() for _, te in cv_splits(y, groups, clean, 4, 0)]
    assert np.mean(per_fold) == pytest.approx(cv.cv_score)


def test_label_issues_on_blobs_and_missing_thumbnails_are_shown(tmp_path):
    X, y = blobs(30, 3, 8, seed=0, spread=1.5)
    noisy = y.copy()
    flipped = np.arange(0, 90, 15)  # 6 of 90 labels moved to the next class
    noisy[flipped] = (y[flipped] + 1) % 3
    path = write_feature_file(str(tmp_path / "f.h5"), {"train": (X, noisy), "val": blobs(5, 3, 8, seed=1)}, CLASSES)
    result = run_audit(AuditConfig(path, str(tmp_path / "audit"), n_jobs=1))
    train = [r for r in result.rows if r["split"] == "train"]
    flagged = {i for i, r in enumerate(train) if r["label_issue"]}
    assert flagged == set(flipped.tolist())
    assert all(train[i]["suggested_label"] == CLASSES[y[i]] for i in flipped)
    # the images are not on disk: thumbnails are recorded as missing, and shown as such
    assert all(r.get("thumbnail") == "" and "file not found" in r["thumbnail_error"] for r in train if r["label_issue"])
    page = open(tmp_path / "audit" / "index.html", encoding="utf-8").read()
    assert page.count("thumbnail missing: file not found") >= len(flipped) and "<img" not in page
    assert any("could not be decoded for the pixel hash" in n for n in result.notes)


def test_bad_input_is_refused(tmp_path):
    X, y = blobs(10, 2, 4, seed=0)
    no_train = write_feature_file(str(tmp_path / "v.h5"), {"val": (X, y)}, ["a", "b"])
    with pytest.raises(AuditError, match="no training split"):
        run_audit(AuditConfig(no_train, str(tmp_path / "o1")))
    one = write_feature_file(str(tmp_path / "one.h5"), {"train": (X, np.zeros_like(y))}, ["a"])
    with pytest.raises(AuditError, match="one class"):
        run_audit(AuditConfig(one, str(tmp_path / "o2")))
    one_present = write_feature_file(str(tmp_path / "onep.h5"), {"train": (X, np.zeros_like(y))}, ["a", "b"])
    with pytest.raises(AuditError, match="single class"):
        run_audit(AuditConfig(one_present, str(tmp_path / "o3")))
    good = write_feature_file(str(tmp_path / "g.h5"), {"train": (X, y)}, ["a", "b"])
    other = write_feature_file(str(tmp_path / "r.h5"), {"train": (X, y)}, ["a", "b"], backbone="resnet18")
    train_head(HeadConfig(other, str(tmp_path / "head"), n_jobs=1))
    with pytest.raises(HeadError, match="backbone"):
        run_audit(AuditConfig(good, str(tmp_path / "o4"), head_dir=str(tmp_path / "head")))
    assert not os.path.exists(tmp_path / "o4")


def test_existing_output_folder_needs_overwrite(tmp_path):
    X, y = blobs(10, 2, 4, seed=0)
    path = write_feature_file(str(tmp_path / "g.h5"), {"train": (X, y)}, ["a", "b"])
    out = tmp_path / "audit"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(AuditError, match="--overwrite"):
        run_audit(AuditConfig(path, str(out)))
    run_audit(AuditConfig(path, str(out), overwrite=True, n_jobs=1))
    assert (out / "audit.csv").exists() and (out / "notes.txt").read_text() == "mine"


def test_audit_with_a_head_uses_its_classifier_and_C(tmp_path):
    X, y = blobs(20, 3, 6, seed=3, spread=3.0)
    path = write_feature_file(str(tmp_path / "g.h5"), {"train": (X, y), "val": blobs(5, 3, 6, seed=4)}, CLASSES)
    train_head(HeadConfig(path, str(tmp_path / "head"), clf="svm", C=0.5, n_jobs=1))
    result = run_audit(AuditConfig(path, str(tmp_path / "audit"), head_dir=str(tmp_path / "head"), n_jobs=1))
    model = result.summary["model"]
    assert model["clf"] == "svm" and model["C"] == 0.5 and model["C_selection"] == "fixed by --head"


def test_cli_audit_and_its_errors(audited, tmp_path):
    out = str(tmp_path / "cli")
    ok = run_cli("run_head.py", "audit", "--features", audited["features"], "--out", out, "--n-jobs", "1")
    assert ok.returncode == 0, ok.stderr
    assert "leak across splits" in ok.stdout and os.path.exists(os.path.join(out, "index.html"))
    again = run_cli("run_head.py", "audit", "--features", audited["features"], "--out", out)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "--overwrite" in again.stderr
    missing = run_cli("run_head.py", "audit", "--features", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_exclude_list_in_extraction_is_part_of_the_identity(audited, tmp_path):
    exclude = os.path.join(audited["out"], "exclude.txt")
    out = str(tmp_path / "clean.h5")
    r = run_cli("run_extract.py", "--data", audited["data"], "--out", out, "--backbone", "tiny_cnn", "--weights", "none",
                "--exclude", exclude, "--quiet")
    assert r.returncode == 0, r.stderr
    listed = [line.strip() for line in open(exclude, encoding="utf-8") if line.strip() and not line.startswith("#")]
    with FeatureFile(out) as ff, FeatureFile(audited["features"]) as full:
        paths = {p for s in ff.splits for p in ff.read_split(s).paths}
        full_paths = {p for s in full.splits for p in full.read_split(s).paths}
        recorded = ff.config["exclude"]
    assert not paths & set(listed) and paths == full_paths - set(listed)
    assert recorded["listed"] == len(listed) and recorded["excluded"] == len(listed)
    assert len(recorded["sha256"]) == 64
    other = tmp_path / "other.txt"
    other.write_text(listed[0] + "\n")
    with pytest.raises(ConfigMismatch, match="config"):
        extract(ExtractConfig(data_root=audited["data"], out_path=out, backbone="tiny_cnn", weights="none",
                              progress=False, exclude=str(other)))
    bad = run_cli("run_extract.py", "--data", audited["data"], "--out", str(tmp_path / "x.h5"), "--backbone", "tiny_cnn",
                  "--weights", "none", "--exclude", str(tmp_path / "absent.txt"))
    assert bad.returncode == 2 and "error: --exclude" in bad.stderr


def test_exclude_list_in_heads_drops_training_rows_and_is_recorded(tmp_path):
    X, y = blobs(20, 2, 4, seed=0)
    path = write_feature_file(str(tmp_path / "f.h5"), {"train": (X, y)}, ["a", "b"], views={"train": 1})
    exclude = tmp_path / "exclude.txt"
    exclude.write_text("# flagged\ntrain/0.png\ntrain/3.png\nval/not-there.png\n")
    result = train_head(HeadConfig(path, str(tmp_path / "h"), exclude=str(exclude), n_jobs=1))
    assert result.report["train_rows"] == 40 - 4 and result.report["train_images"] == 18
    assert result.report["exclude"]["excluded"] == 2 and result.report["exclude"]["listed"] == 3
    meta = json.load(open(tmp_path / "h" / "head.json", encoding="utf-8"))
    assert meta["extra"]["exclude"]["sha256"] == result.report["exclude"]["sha256"]


def test_dct_hash_survives_resizing_and_mirroring_but_separates_pictures():
    a, b = smooth_image(1, 0, (200, 150)), smooth_image(2, 0, (200, 150))
    bits, mirrored_bits = dct_hashes(a)
    copy_bits, _ = dct_hashes(a.resize((130, 98), Image.BICUBIC))
    mirror_bits, _ = dct_hashes(a.transpose(Image.FLIP_LEFT_RIGHT))
    other_bits, _ = dct_hashes(b)
    assert (bits != copy_bits).sum() <= 4
    assert (mirror_bits != mirrored_bits).sum() <= 2 and (mirror_bits != bits).sum() > 12
    assert (bits != other_bits).sum() > 16


def test_thumbnails_apply_exif_orientation(tmp_path):
    img = smooth_image(5, 1, (300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to show
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    thumb = upright_thumbnail(str(tmp_path / "phone.jpg"))
    assert thumb.size == (107, 160)


@pytest.fixture(scope="module")
def chromium():
    from tests.browser import find_chromium

    path = find_chromium()
    if path is None:
        if os.environ.get("TLCACHE_REQUIRE_BROWSER"):
            pytest.fail("TLCACHE_REQUIRE_BROWSER is set but no chromium is on PATH (.ci/run installs it)")
        pytest.skip("no chromium on PATH: install Debian's chromium package to run the browser check")
    return path


def test_report_renders_in_headless_chromium(audited, chromium, tmp_path):
    from tests.browser import inspect_page

    page = inspect_page(chromium, os.path.join(audited["out"], "index.html"))
    assert page["sections"] == SECTIONS
    assert len(page["images"]) >= 10
    assert all(img["complete"] and img["width"] > 0 for img in page["images"]), page["images"]
    assert page["errors"] == []
    # the check itself can fail: a page with a missing image and a console error
    (tmp_path / "bad.html").write_text('<html><body><img src="absent.jpg"><script>console.error("boom")</script></body></html>')
    bad = inspect_page(chromium, str(tmp_path / "bad.html"))
    assert bad["images"][0]["width"] == 0 and any("boom" in e for e in bad["errors"])
