"""Weights stored in the autocast dtype once, for frozen inference passes under autocast.

Under ``torch.autocast`` every convolution and linear layer casts its float32 weight and
bias to bf16 (or fp16) on every call: for ResNet-50 about 100 MB read and 50 MB written per
batch. For a frozen network that cast gives the same tensors every batch, so it is done
once instead, with the same rounding; autocast passes a tensor already in its dtype
through untouched, so the outputs are bitwise the same. Two checks keep that promise:

- a ``torch.fx`` trace must show a layer's weight and bias going straight into its
  convolution or linear call and nowhere else (a layer that does arithmetic on its own
  weight first, weight standardisation say, keeps float32; so do layers with hooks or
  parametrizations, and every layer of a network that cannot be traced);
- a trace cannot see autocast switched off inside the network, so the cast network must
  then give bitwise the same output as before on a random batch, or the cast is undone.
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.conv import _ConvNd

# Calls that autocast runs in the lower dtype on CPU and CUDA, taking (input, weight, bias).
# Transposed convolutions call other functions, so their layers are never cast.
_LOWER_PRECISION_CALLS = {F.conv1d, F.conv2d, F.conv3d, F.linear}
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _ThroughLayersTracer(fx.Tracer):
    """Traces into the given layers, so that their weights appear as ``get_attr`` nodes; others stay as they are."""

    def __init__(self, layers: set[int]) -> None:
        super().__init__()
        self.layers = layers  # ids of the candidate modules

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return id(module) not in self.layers and super().is_leaf_module(module, qualified_name)


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Convolution and linear layers with plain float32 parameters, and no hooks that a trace would run."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, (_ConvNd, nn.Linear)) or hasattr(module, "parametrizations"):
            continue
        if module._forward_hooks or module._forward_pre_hooks:
            continue
        weight, bias = module._parameters.get("weight"), module._parameters.get("bias")
        if weight is None or weight.dtype != torch.float32 or (bias is not None and bias.dtype != torch.float32):
            continue
        found[name] = module
    return found


def _only_fed_to_the_call(node: fx.Node) -> bool:
    """Whether every use of ``node`` is as the weight or bias of a convolution or linear call."""
    for user in node.users:
        if user.op != "call_function" or user.target not in _LOWER_PRECISION_CALLS:
            return False
        if user.args[:1] == (node,) or user.kwargs.get("input") is node:
            return False
    return True


def _castable(model: nn.Module, candidates: dict[str, nn.Module]) -> list[nn.Module]:
    """The candidates whose weight and bias the traced graph feeds only to their own call."""
    graph = _ThroughLayersTracer({id(m) for m in candidates.values()}).trace(model)
    reads: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            reads.setdefault(node.target, []).append(node)
    castable = []
    for name, module in candidates.items():
        prefix = f"{name}." if name else ""
        tensors = [prefix + "weight"] + ([prefix + "bias"] if module.bias is not None else [])
        if reads.get(tensors[0]) and all(_only_fed_to_the_call(n) for t in tensors for n in reads.get(t, [])):
            castable.append(module)
    return castable


def _bitwise_equal(a, b) -> bool:
    """Two network outputs are the same tensor, bit for bit (any other output counts as different)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)


def example_batch(side: int) -> torch.Tensor:
    """Two seeded random RGB images of ``side`` pixels, for the check of :func:`cast_weights_for_autocast`."""
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def cast_weights_for_autocast(model: nn.Module, precision: str, example: torch.Tensor) -> int:
    """Store the weights and biases of ``model``'s convolution and linear layers in ``precision``'s dtype, in place.

    Only for a frozen network that runs under :func:`features.devices.autocast` with the
    same ``precision``: its outputs stay bitwise the same, without a cast per call. Only
    the ``weight`` and ``bias`` of a layer are cast, never its other parameters or buffers.

    Parameters
    ----------
    model : nn.Module
        In eval mode, on the CPU; changed in place.
    precision : str
        ``"bf16"`` or ``"fp16"``; ``"fp32"`` changes nothing.
    example : torch.Tensor
        A CPU batch the network takes (random values are best, :func:`example_batch`): the output on it before
        and after the cast, under CPU autocast, must be the same tensor bit for bit, or the cast is undone.

    Returns
    -------
    int
        How many layers were cast (0 when undone).
    """
    dtype = _AUTOCAST_DTYPES.get(precision)
    candidates = _candidates(model) if dtype is not None else {}
    if not candidates:
        return 0
    try:
        layers = _castable(model, candidates)
    except Exception:  # noqa: BLE001 - fx raises many types on code it cannot trace; the model stays as it is
        return 0
    if not layers:
        return 0
    originals = [(layer, name, getattr(layer, name)) for layer in layers for name in ("weight", "bias")
                 if getattr(layer, name) is not None]

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            return model(example)

    before = run()
    for layer, name, tensor in originals:
        setattr(layer, name, nn.Parameter(tensor.detach().to(dtype), requires_grad=False))
    try:
        kept = _bitwise_equal(before, run())
    except Exception:  # noqa: BLE001 - e.g. a layer run with autocast switched off meets a bf16 weight
        kept = False
    if not kept:
        for layer, name, tensor in originals:
            setattr(layer, name, tensor)
        return 0
    return len(layers)
