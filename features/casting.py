"""Weights stored in the autocast dtype once, for frozen inference passes under autocast.

Under ``torch.autocast`` every convolution and linear layer casts its float32 weight and
bias to bf16 (or fp16) on every call: for ResNet-50 about 100 MB read and 50 MB written per
batch. For a frozen network that cast gives the same tensors every batch, so it is done
once instead, with the same rounding; autocast passes a tensor already in its dtype
through untouched, so the outputs are bitwise the same. A layer is cast only where a
``torch.fx`` trace shows its weight and bias going straight into the convolution or linear
call and nowhere else; a layer that does arithmetic on its own weight first (weight
standardisation, say) keeps float32, and a network that cannot be traced is left as it is.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.conv import _ConvNd

# Calls that autocast runs in the lower dtype on CPU and CUDA, taking (input, weight, bias).
_LOWER_PRECISION_CALLS = {F.conv1d, F.conv2d, F.conv3d, F.linear}
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _ThroughLayersTracer(fx.Tracer):
    """Traces into convolution and linear layers, so that their weights appear as ``get_attr`` nodes."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not isinstance(module, (_ConvNd, nn.Linear)) and super().is_leaf_module(module, qualified_name)


def _only_fed_to_the_call(node: fx.Node) -> bool:
    """Whether every use of ``node`` is as the weight or bias of a convolution or linear call."""
    for user in node.users:
        if user.op != "call_function" or user.target not in _LOWER_PRECISION_CALLS:
            return False
        if user.args[:1] == (node,) or user.kwargs.get("input") is node:
            return False
    return True


def cast_weights_for_autocast(model: nn.Module, precision: str) -> int:
    """Store the weights and biases of ``model``'s convolution and linear layers in ``precision``'s dtype, in place.

    Only for a frozen network that runs under :func:`features.devices.autocast` with the
    same ``precision``: its outputs stay bitwise the same, without a cast per call.

    Parameters
    ----------
    model : nn.Module
        In eval mode; changed in place.
    precision : str
        ``"bf16"`` or ``"fp16"``; ``"fp32"`` changes nothing.

    Returns
    -------
    int
        How many layers were cast.
    """
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return 0
    try:
        graph = _ThroughLayersTracer().trace(model)
    except Exception:  # noqa: BLE001 - fx raises many types on code it cannot trace; the model stays as it is
        return 0
    reads: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            reads.setdefault(node.target, []).append(node)
    cast = 0
    for name, module in model.named_modules():
        if not isinstance(module, (_ConvNd, nn.Linear)) or module.weight.dtype != torch.float32:
            continue
        prefix = f"{name}." if name else ""
        tensors = [prefix + "weight"] + ([prefix + "bias"] if module.bias is not None else [])
        if not reads.get(tensors[0]) or not all(_only_fed_to_the_call(n) for t in tensors for n in reads.get(t, [])):
            continue
        module.to(dtype)
        cast += 1
    return cast
