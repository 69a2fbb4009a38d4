"""Export a fused model as TorchScript and ``torch.export`` programs (ONNX when available),
each checked against the eager model on a real batch, plus a JSON sidecar."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import torch
from torch import nn

from features.hashing import sha256_file

SIDECAR = "model.json"
TORCHSCRIPT = "model.ts"
EXPORTED_PROGRAM = "model.pt2"
ONNX = "model.onnx"


class ExportMismatch(Exception):
    """An exported program disagrees with the eager model."""


def _check(name: str, eager: torch.Tensor, exported: torch.Tensor, atol: float) -> float:
    diff = float((eager - exported).abs().max())
    if not torch.allclose(eager, exported, rtol=1e-4, atol=atol):
        raise ExportMismatch(f"{name} output differs from the eager model by up to {diff:.3g}")
    return diff


def export_model(model: nn.Module, example: torch.Tensor, out_dir: str, atol: float = 1e-4) -> dict:
    """Write every available format to ``out_dir`` and verify each one after reloading it.

    Parameters
    ----------
    model : nn.Module
        The fused (and possibly fine-tuned) network; exported in eval mode on CPU, fp32.
    example : torch.Tensor
        A real preprocessed batch (N >= 2) used for tracing and for the equality check.
    out_dir : str
    atol : float
        Absolute tolerance of the check.

    Returns
    -------
    dict
        ``{format: {"file": name, "max_abs_diff": float}}``, or ``{"skipped": reason}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    model = model.cpu().eval()
    example = example.cpu().float()
    with torch.inference_mode():
        eager = model(example)
    results = {}

    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but still the format many C++/mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(os.path.join(out_dir, TORCHSCRIPT))
        with torch.inference_mode():
            reloaded = torch.jit.load(os.path.join(out_dir, TORCHSCRIPT))(example)
    results["torchscript"] = {"file": TORCHSCRIPT, "max_abs_diff": _check("TorchScript", eager, reloaded, atol)}

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, os.path.join(out_dir, EXPORTED_PROGRAM))
    with torch.inference_mode():
        reloaded = torch.export.load(os.path.join(out_dir, EXPORTED_PROGRAM)).module()(example)
    results["torch.export"] = {"file": EXPORTED_PROGRAM, "max_abs_diff": _check("torch.export", eager, reloaded, atol)}

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        results["onnx"] = {"skipped": "install the onnx extra (onnx, onnxscript, onnxruntime) to export ONNX"}
    else:
        import onnxruntime

        torch.onnx.export(model, (example,), os.path.join(out_dir, ONNX), input_names=["image"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True)
        session = onnxruntime.InferenceSession(os.path.join(out_dir, ONNX), providers=["CPUExecutionProvider"])
        onnx_out = torch.as_tensor(session.run(None, {"image": example.numpy()})[0])
        results["onnx"] = {"file": ONNX, "max_abs_diff": _check("ONNX", eager, onnx_out, atol)}
    return results


def write_sidecar(out_dir: str, sidecar: dict) -> str:
    """Write ``model.json`` (what predict needs besides the program), with the SHA-256 of every exported file."""
    for info in sidecar["exports"].values():
        if "file" in info:
            info["sha256"] = sha256_file(os.path.join(out_dir, info["file"]))
    path = os.path.join(out_dir, SIDECAR)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(sidecar, fh, indent=2)
    return path
