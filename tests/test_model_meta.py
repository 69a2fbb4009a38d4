"""model.json: one reader checks format, version, keys, types and hashes; predict refuses in one line."""

import json
import os
import shutil

import pytest

from pipeline.model_meta import MODEL_FORMAT_VERSION, ModelDirError, read_model_meta, verified_export
from tests.conftest import one_line_error, run_cli


def _copy_with(model_dir: str, dest: str, edit) -> str:
    """A copy of MODEL_DIR whose model.json went through ``edit(meta)`` (which changes it in place)."""
    shutil.copytree(model_dir, dest)
    path = os.path.join(dest, "model.json")
    with open(path, encoding="utf-8") as fh:
        meta = json.load(fh)
    edit(meta)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    return dest


def test_a_fused_folder_reads_back(tiny_model):
    _, _, model_dir = tiny_model
    meta = read_model_meta(model_dir)
    assert meta["format_version"] == MODEL_FORMAT_VERSION == 1 and meta["classes"] == ["ants", "bees"]
    assert verified_export(model_dir, meta, "torch.export").endswith("model.pt2")


@pytest.mark.parametrize("edit, needles", [
    (lambda m: m.update(format_version=2), ["unsupported model format_version 2", "reads version 1", "newer"]),
    (lambda m: m.update(format_version="1"), ["unsupported model format_version '1'"]),
    (lambda m: m.update(format_version=True), ["unsupported model format_version True"]),
    (lambda m: m.update(format="other.model"), ["not a tlcache model description", "'other.model'"]),
    (lambda m: m.pop("preprocessing"), ["has no 'preprocessing'"]),
    (lambda m: m.update(input_size="224"), ["'input_size' is str, expected int"]),
    (lambda m: m.update(finetune=[]), ["'finetune' is list, expected dict or null"]),
    (lambda m: m.update(classes=["ants", "ants"]), ["names a class twice"]),
    (lambda m: m.update(classes=[]), ["non-empty list of names"]),
    (lambda m: m["preprocessing"].pop("crop_size"), ["'preprocessing' is unusable"]),
    (lambda m: m.update(input_size=m["input_size"] * 2), ["'input_size' is 64 but the preprocessing crops 32 px"]),
    (lambda m: m["exports"].pop("torch.export"), ["'exports' has no 'torch.export'"]),
    (lambda m: m["exports"]["torch.export"].update(file="../model.pt2"), ["expected a file name inside the folder"]),
    (lambda m: m["exports"]["torchscript"].pop("sha256"), ["export 'torchscript' has no SHA-256 of model.ts"]),
    (lambda m: m["exports"]["torch.export"].update(skipped="no"), ["must name either a file or why"]),
], ids=["newer-version", "version-string", "version-bool", "other-format", "missing-key", "wrong-type",
        "finetune-list", "duplicate-class", "no-class", "bad-preprocessing", "size-mismatch", "missing-export", "path-outside",
        "missing-sha256", "file-and-skipped"])
def test_reader_refuses_what_it_cannot_use(tiny_model, tmp_path, edit, needles):
    _, _, model_dir = tiny_model
    copy = _copy_with(model_dir, str(tmp_path / "model"), edit)
    with pytest.raises(ModelDirError) as info:
        read_model_meta(copy)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message


def test_reader_refuses_non_folders_and_broken_json(tiny_model, tmp_path):
    _, _, model_dir = tiny_model
    with pytest.raises(ModelDirError, match="not a model folder"):
        read_model_meta(str(tmp_path / "nothing"))
    copy = str(tmp_path / "model")
    shutil.copytree(model_dir, copy)
    os.makedirs(copy + "2.partial")
    with pytest.raises(ModelDirError, match="an unfinished build exists"):
        read_model_meta(copy + "2")
    for text, needle in (("{", "unreadable"), ("[1, 2]", "not a tlcache model description")):
        with open(os.path.join(copy, "model.json"), "w", encoding="utf-8") as fh:
            fh.write(text)
        with pytest.raises(ModelDirError, match=needle):
            read_model_meta(copy)


@pytest.mark.parametrize("case", ["newer version", "missing key", "onnx without sha256"])
def test_predict_refuses_a_bad_model_json_in_one_line(tiny_model, tmp_path, case):
    data, _, model_dir = tiny_model
    edit, runtime, needles = {
        "newer version": (lambda m: m.update(format_version=99), "onnxruntime", ["format_version 99", "newer"]),
        "missing key": (lambda m: m.pop("classes"), "torch", ["damaged model folder", "has no 'classes'"]),
        "onnx without sha256": (lambda m: m["exports"]["onnx"].pop("sha256"), "onnxruntime",
                                ["export 'onnx' has no SHA-256 of model.onnx"]),
    }[case]
    if runtime == "onnxruntime" and "file" not in read_model_meta(model_dir)["exports"]["onnx"]:
        pytest.skip("the onnx extra (part of the test extra) is not installed")
    copy = _copy_with(model_dir, str(tmp_path / "model"), edit)
    r = run_cli("-m pipeline.predict", "--model", copy, os.path.join(data, "val", "ants"), "--runtime", runtime)
    assert r.returncode == 2 and r.stdout == ""
    one_line_error(r.stderr, *needles)
