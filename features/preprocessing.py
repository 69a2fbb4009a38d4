"""Per-backbone image preprocessing: one record, turned into torchvision transforms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

_INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-style [-1, 1] scaling used by the EfficientNet-Lite checkpoints: (x*255 - 127) / 128.
TF_MEAN = (127.0 / 255.0,) * 3
TF_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into the tensor a backbone expects.

    Parameters
    ----------
    resize_size : int
        Length of the shorter side after resizing.
    crop_size : int
        Side of the square centre crop fed to the network.
    interpolation : str
        ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    mean, std : tuple of float
        Per-channel normalisation applied to pixels scaled to [0, 1].
    """

    resize_size: int
    crop_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> str:
        """Serialise to a canonical JSON string (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        return cls(
            resize_size=int(raw["resize_size"]),
            crop_size=int(raw["crop_size"]),
            interpolation=str(raw["interpolation"]),
            mean=tuple(float(m) for m in raw["mean"]),
            std=tuple(float(s) for s in raw["std"]),
        )

    def eval_transform(self) -> v2.Compose:
        """Resize, centre crop, scale to [0, 1] and normalise a PIL RGB image."""
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(self.resize_size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True),
                v2.CenterCrop(self.crop_size),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )

    def train_transform(self) -> v2.Compose:
        """Random resized crop and horizontal flip, then the same scaling and normalisation."""
        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.RandomResizedCrop(
                    self.crop_size, interpolation=_INTERPOLATIONS[self.interpolation], antialias=True
                ),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )
