"""Export a fused model as TorchScript and ``torch.export`` programs (ONNX when the onnx extra is
installed), each checked against the eager model on a real batch after reloading, plus a JSON sidecar."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings

import torch
from torch import nn

from features.hashing import sha256_file
from pipeline.errors import ExportMismatch
from pipeline.filenames import EXPORTED_PROGRAM, MODEL_META, ONNX, TORCHSCRIPT
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ONNX_SINGLE_FILE_LIMIT = 2**31 - 2**26  # protobuf's 2 GiB, less room for the graph itself


def _check(name: str, eager: torch.Tensor, exported: torch.Tensor, atol: float) -> float:
    diff = float((eager - exported).abs().max())
    if not torch.allclose(eager, exported, rtol=1e-4, atol=atol):
        raise ExportMismatch(f"{name} output differs from the eager model by up to {diff:.3g}")
    return diff


def same_logits(name: str, reference: nn.Module, candidate: nn.Module, example: torch.Tensor,
                rtol: float = 1e-4) -> float:
    """Check that ``candidate`` gives ``reference``'s logits on ``example`` (fp32, eval), within ``rtol`` of their scale.

    Returns
    -------
    float
        The largest absolute difference.

    Raises
    ------
    ExportMismatch
    """
    with torch.inference_mode():
        expected, got = reference(example.float()), candidate(example.float())
    return _check(name, expected, got, atol=rtol * float(expected.abs().max()))


def onnx_available() -> bool:
    """True when every package the ONNX export and its check need is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)


def _export_onnx(model: nn.Module, program: torch.export.ExportedProgram, example: torch.Tensor,
                 eager: torch.Tensor, out_dir: str, atol: float) -> dict:
    """Convert the ``torch.export`` program to ``model.onnx`` and check it with onnxruntime.

    A conversion the exporter or onnxruntime cannot do is recorded as skipped (the other
    formats stay usable); a converted model that computes something else raises
    :class:`ExportMismatch`, as for the other formats.
    """
    import onnxruntime

    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if weight_bytes >= ONNX_SINGLE_FILE_LIMIT:
        return {"skipped": f"weights of {weight_bytes / 2**30:.1f} GiB exceed the 2 GiB a single ONNX file holds"}
    path = os.path.join(out_dir, ONNX)
    try:
        # From the program already exported above: tracing the model again would double the time.
        onnx_program = torch.onnx.export(program, input_names=["image"], output_names=["logits"], dynamo=True,
                                         verbose=False)
        # One self-contained file, so that the SHA-256 in model.json covers every weight.
        onnx_program.save(path, external_data=False)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        onnx_out = torch.as_tensor(session.run(None, {session.get_inputs()[0].name: example.numpy()})[0])
    except Exception as exc:  # noqa: BLE001 - exporter and runtime raise many types for an operator they lack
        if os.path.exists(path):
            os.remove(path)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"skipped": f"ONNX export or its onnxruntime run failed ({type(exc).__name__}: {first[:200]})"}
    return {"file": ONNX, "max_abs_diff": _check("ONNX", eager, onnx_out, atol)}


def export_model(model: nn.Module, example: torch.Tensor, out_dir: str, atol: float = 1e-4,
                 onnx: bool = True) -> dict:
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
    onnx : bool
        Also write ``model.onnx`` when the onnx extra is installed (it adds several seconds
        to an export: about 10 s for efficientnet_lite0 on 2 cores).

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

    if not onnx:
        results["onnx"] = {"skipped": "not requested (--no-onnx)"}
    elif not onnx_available():
        results["onnx"] = {"skipped": f"install the onnx extra ({', '.join(ONNX_PACKAGES)}) to export ONNX"}
    else:
        results["onnx"] = _export_onnx(model, program, example, eager, out_dir, atol)
    return results


def write_sidecar(out_dir: str, sidecar: dict) -> str:
    """Write ``model.json`` (what predict needs besides the program), with the SHA-256 of every exported file."""
    for info in sidecar["exports"].values():
        if "file" in info:
            info["sha256"] = sha256_file(os.path.join(out_dir, info["file"]))
    path = os.path.join(out_dir, MODEL_META)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(sidecar, fh, indent=2)
    return path
