"""BatchNorm folded into the convolution before it, for frozen inference passes.

In eval mode a BatchNorm layer is a per-channel affine map, so when it reads the output
of a convolution and nothing else does, it can be merged into that convolution's weights
and bias: one pass over the activations less, same result up to rounding. Which pairs
are adjacent is read from a ``torch.fx`` trace of the network, never guessed from names;
a network that cannot be traced is left as it is. Fine-tuning keeps real BatchNorm.
"""

from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _LeafTracer(fx.Tracer):
    """Keeps convolutions, BatchNorm layers and the named modules as single calls in the graph."""

    def __init__(self, keep: set[str]) -> None:
        super().__init__()
        self.keep = keep

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (qualified_name in self.keep or isinstance(module, (nn.Conv2d, _BatchNorm))
                or super().is_leaf_module(module, qualified_name))


def fold_batchnorm(model: nn.Module, keep_modules: tuple[str, ...] = ()) -> tuple[nn.Module, int]:
    """A copy of ``model`` for inference with every conv -> BatchNorm pair of its traced graph folded.

    Parameters
    ----------
    model : nn.Module
        In eval mode (BatchNorm uses its running statistics). It is not changed.
    keep_modules : tuple of str
        Dotted names of modules that must stay callable submodules of the result, e.g.
        the module a forward hook taps and the classifier slot.

    Returns
    -------
    model : nn.Module
        A ``torch.fx.GraphModule``, or ``model`` itself when it cannot be traced or has
        no foldable pair.
    folded : int
        How many BatchNorm layers were folded.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    try:
        graph = _LeafTracer(set(keep_modules)).trace(model)
    except Exception:  # noqa: BLE001 - fx raises many types on code it cannot trace; the model stays as it is
        return model, 0
    folded_model = fx.GraphModule(copy.deepcopy(model), graph)
    modules = dict(folded_model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    for node in list(graph.nodes):
        if not _is_foldable(node, modules, calls):
            continue
        conv = node.args[0]
        folded_model.set_submodule(conv.target, fuse_conv_bn_eval(modules[conv.target], modules[node.target]))
        modules[conv.target] = folded_model.get_submodule(conv.target)
        node.replace_all_uses_with(conv)
        graph.erase_node(node)
        folded += 1
    if not folded:
        return model, 0
    graph.lint()
    folded_model.delete_all_unused_submodules()  # the folded BatchNorm layers
    folded_model.recompile()
    return folded_model.eval(), folded


def _is_foldable(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> bool:
    """A BatchNorm call whose only input is a convolution's output that nothing else reads."""
    if node.op != "call_module" or not isinstance(modules[node.target], _BatchNorm) or len(node.args) != 1:
        return False
    bn, source = modules[node.target], node.args[0]
    if not bn.track_running_stats or bn.running_mean is None or calls[node.target] != 1:
        return False
    return (isinstance(source, fx.Node) and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d) and calls[source.target] == 1
            and len(source.users) == 1)
