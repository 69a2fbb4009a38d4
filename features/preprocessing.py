"""Per-backbone image preprocessing: one record, turned into torchvision transforms.

The record is part of every feature file's identity, which stage two reads without
torch; torchvision is imported only when transforms are built.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from PIL import Image

from features.images import load_rgb

if TYPE_CHECKING:
    import torch
    from torchvision.transforms import v2

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

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
    exif_orientation : bool
        Images are turned upright by their EXIF Orientation tag before anything else.
    jpeg_draft : bool
        JPEGs at least twice ``resize_size`` (shorter side) are decoded at 1/2, 1/4 or
        1/8 scale in the DCT domain, keeping the shorter side >= ``resize_size``.

    Both decoding fields are part of the recorded preprocessing (and so of a feature
    file's identity). Records written before they existed read as ``False``: those
    features were made from full decodes with the tag ignored.
    """

    resize_size: int
    crop_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    exif_orientation: bool = True
    jpeg_draft: bool = True

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, raw: dict) -> "Preprocessing":
        """Inverse of :meth:`to_dict`; records without the decoding fields read them as ``False``.

        Raises
        ------
        KeyError, ValueError, TypeError
            A missing or malformed field.
        """
        if raw["interpolation"] not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {raw['interpolation']!r}")
        return cls(
            resize_size=int(raw["resize_size"]),
            crop_size=int(raw["crop_size"]),
            interpolation=str(raw["interpolation"]),
            mean=tuple(float(m) for m in raw["mean"]),
            std=tuple(float(s) for s in raw["std"]),
            exif_orientation=bool(raw.get("exif_orientation", False)),
            jpeg_draft=bool(raw.get("jpeg_draft", False)),
        )

    def at_crop_size(self, crop_size: int) -> "Preprocessing":
        """The same recipe for another crop side.

        The resize keeps its ratio to the crop, so the crop covers the same share of the
        image at every size (Lite0's 256/224: 288 is cut from 329). One rule for every
        backbone; it is what BENCHMARKS.md section 22 measured (the TF reference's
        "crop + 32" for the Lite nets holds at their own sizes only).

        Parameters
        ----------
        crop_size : int
            Side of the square centre crop.

        Returns
        -------
        Preprocessing
        """
        return replace(self, crop_size=crop_size, resize_size=round(crop_size * self.resize_size / self.crop_size))

    def load(self, path: str | os.PathLike) -> Image.Image:
        """Decode ``path`` to RGB the way this record says (see :func:`features.images.load_rgb`).

        Raises
        ------
        features.images.UnreadableImage
        """
        return load_rgb(path, exif_transpose=self.exif_orientation,
                        min_side=self.resize_size if self.jpeg_draft else None)

    def eval_pixels(self) -> v2.Compose:
        """Resize and centre crop a PIL RGB image to a uint8 CHW tensor (:meth:`normalise` finishes it)."""
        from torchvision.transforms import v2

        return v2.Compose(
            [
                v2.PILToTensor(),
                v2.Resize(self.resize_size, interpolation=v2.InterpolationMode(self.interpolation), antialias=True),
                v2.CenterCrop(self.crop_size),
            ]
        )

    def train_pixels(self, scale: tuple[float, float] = (0.08, 1.0), flip: bool = True) -> v2.Compose:
        """Random resized crop (area share ``scale``) and optional horizontal flip, to a uint8 CHW tensor."""
        from torchvision.transforms import v2

        steps = [
            v2.PILToTensor(),
            v2.RandomResizedCrop(
                self.crop_size, scale=scale, interpolation=v2.InterpolationMode(self.interpolation), antialias=True
            ),
        ]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scale uint8 pixels (``(..., 3, H, W)``, one image or a batch) to [0, 1] and normalise them.

        The same arithmetic per element whether applied to one image or a whole batch, so
        normalising a batch at once gives the very values of normalising each image alone.
        """
        import torch
        from torchvision.transforms.v2 import functional as F

        return F.normalize(F.to_dtype(pixels, torch.float32, scale=True), self.mean, self.std)

    def eval_transform(self) -> v2.Compose:
        """Resize, centre crop, scale to [0, 1] and normalise a PIL RGB image."""
        from torchvision.transforms import v2

        return v2.Compose([self.eval_pixels(), v2.Lambda(self.normalise)])

    def train_transform(self, scale: tuple[float, float] = (0.08, 1.0), flip: bool = True) -> v2.Compose:
        """:meth:`train_pixels`, then the same scaling and normalisation."""
        from torchvision.transforms import v2

        return v2.Compose([self.train_pixels(scale, flip), v2.Lambda(self.normalise)])
