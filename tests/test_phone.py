"""Phone photos: EXIF orientation everywhere an image is decoded, reduced-scale JPEG decoding."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from features.backbones import load_backbone
from features.images import EXIF_ORIENTATION, load_rgb
from features.preprocessing import Preprocessing
from pipeline.finetune import LabelledImages
from tests.conftest import HYMENOPTERA

# The stored pixels for each tag: what turns an upright picture into what a camera writes.
STORED = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
          5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90], 7: [Image.Transpose.TRANSVERSE],
          8: [Image.Transpose.ROTATE_270]}


def _upright() -> Image.Image:
    """An asymmetric picture: red top-left quadrant, green top-right, blue bottom, 60x40."""
    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[:20, :30] = (255, 0, 0)
    arr[:20, 30:] = (0, 255, 0)
    arr[20:] = (0, 0, 255)
    return Image.fromarray(arr)


def _save_tagged(img: Image.Image, path: str, orientation: int, **kw) -> str:
    stored = img
    for op in STORED[orientation]:
        stored = stored.transpose(op)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored.save(path, exif=exif, **kw)
    return path


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = _save_tagged(_upright(), str(tmp_path / "p.png"), orientation)
    with Image.open(path) as raw:
        assert raw.getexif()[EXIF_ORIENTATION] == orientation
    np.testing.assert_array_equal(np.asarray(load_rgb(path)), np.asarray(_upright()))
    sideways = np.asarray(load_rgb(path, exif_transpose=False))
    assert sideways.shape != (40, 60, 3) or not np.array_equal(sideways, np.asarray(_upright()))


def _big_jpeg(path: str, size=(4032, 3024)) -> str:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def test_large_jpegs_are_decoded_at_reduced_scale_never_below_the_target(tmp_path):
    big = _big_jpeg(str(tmp_path / "big.jpg"))
    assert load_rgb(big).size == (4032, 3024)
    assert load_rgb(big, min_side=256).size == (504, 378)  # 1/8: the shorter side stays >= 256
    assert load_rgb(big, min_side=500).size == (1008, 756)  # 1/4
    assert load_rgb(big, min_side=1600).size == (4032, 3024)  # under twice the target: every pixel
    png = str(tmp_path / "big.png")
    Image.open(big).save(png)
    assert load_rgb(png, min_side=256).size == (4032, 3024)  # only JPEGs have a DCT to scale in


def test_reduced_decoding_keeps_orientation(tmp_path):
    upright = Image.open(_big_jpeg(str(tmp_path / "u.jpg"), (3024, 4032)))
    path = _save_tagged(upright, str(tmp_path / "phone.jpg"), 6, quality=90)
    with Image.open(path) as raw:
        assert raw.size == (4032, 3024)  # stored sideways, as a phone does
    assert load_rgb(path, min_side=256).size == (378, 504)


def test_preprocessing_records_decoding_and_reads_old_records():
    p = load_backbone("tiny_cnn", "none").preprocessing
    record = p.to_dict()
    assert record["exif_orientation"] is True and record["jpeg_draft"] is True
    old = {k: v for k, v in record.items() if k not in ("exif_orientation", "jpeg_draft")}
    before = Preprocessing.from_dict(old)
    assert not before.exif_orientation and not before.jpeg_draft and before != p


def test_finetuning_and_prediction_decode_like_extraction(tmp_path):
    """Fine-tuning's datasets turn a tagged photo upright (the exported model's prediction: test_submission.py)."""
    _save_tagged(_upright().resize((120, 80)), str(tmp_path / "phone.png"), 6)
    upright = str(tmp_path / "upright.png")
    _upright().resize((120, 80)).save(upright)
    p = load_backbone("tiny_cnn", "none").preprocessing
    tf = p.eval_transform()
    items = LabelledImages(str(tmp_path), [("phone.png", 0), ("upright.png", 0)], p, tf)
    torch.testing.assert_close(items[0][0], items[1][0])


@pytest.mark.slow
def test_reduced_scale_features_within_cosine_099_of_a_full_decode(hymenoptera, tmp_path):
    """12 MP upscales of real photos: Lite0 features of the reduced decode against the full decode."""
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    p = backbone.preprocessing
    full = Preprocessing(p.resize_size, p.crop_size, p.interpolation, p.mean, p.std, True, False)
    folder = os.path.join(HYMENOPTERA, "val", "bees")
    names = sorted(os.listdir(folder))[:6]
    paths = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as img:
            big = img.convert("RGB").resize((4032, 3024), Image.Resampling.BICUBIC)
        paths.append(_save_tagged(big, str(tmp_path / name), 6, quality=92))
    assert load_rgb(paths[0], min_side=p.resize_size).size == (504, 378)  # stored 3024x4032, shown upright
    tf = p.eval_transform()
    from features.hooks import capture_features

    with torch.inference_mode(), capture_features(backbone.model, backbone.spec) as cap:
        backbone.model(torch.stack([tf(p.load(x)) for x in paths]))
        reduced = cap.pop().double().numpy()
        backbone.model(torch.stack([tf(full.load(x)) for x in paths]))
        whole = cap.pop().double().numpy()
    cosine = (reduced * whole).sum(1) / np.linalg.norm(reduced, axis=1) / np.linalg.norm(whole, axis=1)
    assert cosine.min() >= 0.99, cosine
