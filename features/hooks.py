"""Forward hooks that capture a backbone's pooled features and always remove themselves."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from features.backbones import BackboneSpec


class FeatureCapture:
    """Holds the tensor seen by the hook during the last forward pass."""

    def __init__(self, spatial_mean: bool) -> None:
        self._spatial_mean = spatial_mean
        self._value: torch.Tensor | None = None

    def _store(self, tensor: torch.Tensor) -> None:
        self._value = tensor

    def pop(self) -> torch.Tensor:
        """Return the captured features as a flat (N, D) tensor and clear the slot."""
        if self._value is None:
            raise RuntimeError("the feature hook did not fire: was the model called inside capture_features()?")
        value, self._value = self._value, None
        if self._spatial_mean:
            value = value.mean(dim=(2, 3))
        return torch.flatten(value, 1)


@contextmanager
def capture_features(model: nn.Module, spec: "BackboneSpec") -> Iterator[FeatureCapture]:
    """Attach a hook to ``spec.feature_module`` for the duration of the ``with`` block.

    Parameters
    ----------
    model : nn.Module
        The backbone.
    spec : BackboneSpec
        Names the module and whether its output (forward hook) or its input
        (forward pre-hook) is the feature.

    Yields
    ------
    FeatureCapture
        Call ``pop()`` after each forward pass.
    """
    try:
        module = model.get_submodule(spec.feature_module)
    except AttributeError:
        raise AttributeError(
            f"feature module {spec.feature_module!r} is not present in {type(model).__name__}. "
            "Hint: list module names with dict(model.named_modules())"
        ) from None
    capture = FeatureCapture(spec.spatial_mean)
    if spec.feature_tap == "output":
        handle = module.register_forward_hook(lambda _m, _inputs, output: capture._store(output))
    else:
        handle = module.register_forward_pre_hook(lambda _m, inputs: capture._store(inputs[0]))
    try:
        yield capture
    finally:
        handle.remove()
