"""Stage one on the real ants/bees data with the real EfficientNet-Lite0 weights."""

import os

import numpy as np
import pytest
import torch

from features.backbones import load_backbone
from features.images import load_rgb
from features.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from features.store import FeatureFile

pytestmark = pytest.mark.slow

IMAGENET_ANT, IMAGENET_BEE = 310, 309


def test_hymenoptera_file_contents(hymenoptera_lite0):
    with FeatureFile(hymenoptera_lite0) as f:
        assert f.backbone == "efficientnet_lite0" and f.classes == ["ants", "bees"]
        val, train = f.read_split("val"), f.read_split("train")
    assert val.features.shape == (153, 1280) and np.isfinite(val.features).all()
    # Files are decoded by content, so the GIF among the ants is read like the JPEGs (245, not 244).
    assert train.features.shape == (245, 1280)
    assert "train/ants/imageNotFound.gif" in set(train.paths) and not train.skipped


def _zero_shot_accuracy(backbone, preprocessing: Preprocessing, root: str) -> float:
    tf = preprocessing.eval_transform()
    correct = total = 0
    for label, cls in enumerate(["ants", "bees"]):
        folder = os.path.join(root, "val", cls)
        names = sorted(os.listdir(folder))
        for start in range(0, len(names), 32):
            x = torch.stack([tf(load_rgb(os.path.join(folder, n))) for n in names[start:start + 32]])
            with torch.inference_mode():
                logits = backbone.model(x)
            predicted_bee = logits[:, IMAGENET_BEE] > logits[:, IMAGENET_ANT]
            correct += int((predicted_bee == bool(label)).sum())
            total += len(x)
    return correct / total


def test_lite0_needs_tf_style_normalisation(hymenoptera):
    b = load_backbone("efficientnet_lite0")
    right = _zero_shot_accuracy(b, b.preprocessing, hymenoptera)
    p = b.preprocessing
    wrong = _zero_shot_accuracy(b, Preprocessing(p.resize_size, p.crop_size, p.interpolation, IMAGENET_MEAN, IMAGENET_STD),
                                hymenoptera)
    print(f"zero-shot ant/bee accuracy: {right:.3f} with 0.5/0.5, {wrong:.3f} with ImageNet mean/std")
    assert right >= 0.96
    assert right > wrong
