"""Process-level settings for running backbones on CPU."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

# Thirty forward passes of a small conv net at batch 8, after ten warm-up passes;
# count the minor page faults the thirty cost.
_FAULTS = """
import resource, sys, torch
from features.devices import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
x = torch.randn(8, 3, 112, 112)
with torch.inference_mode():
    for _ in range(10):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(30):
        net(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc behaviour")
def test_keep_freed_memory_stops_page_faulting_reused_buffers():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=REPO, capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    _, default_faults = faults("default")
    applied, kept_faults = faults("keep")
    assert applied == "True"
    # One pass allocates three 12.8 MB activations (9,408 pages). With glibc's defaults they
    # are faulted in again on many passes (measured 37k-306k faults for 30 passes, depending
    # on its adaptive thresholds); kept memory is reused (measured 0-6,272: an occasional
    # buffer, not one per pass).
    one_pass_pages = 3 * 8 * 32 * 112 * 112 * 4 // 4096
    assert kept_faults < 3 * one_pass_pages
    assert default_faults > 2 * max(kept_faults, one_pass_pages)


def test_auto_precision_is_bf16_only_where_the_cpu_has_native_bf16():
    import torch

    from features.devices import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, native_bf16=True) == "bf16"
    assert resolve_precision("auto", cpu, native_bf16=False) == "fp32"
    assert resolve_precision("auto", torch.device("cuda"), native_bf16=False) == "fp16"
    assert resolve_precision("fp32", cpu, native_bf16=True) == "fp32"  # asked for: kept
    with pytest.raises(ValueError, match="only supported on CUDA"):
        resolve_precision("fp16", cpu)


def test_default_batch_size_is_chosen_by_device():
    import torch

    from features.devices import default_batch_size

    assert default_batch_size(torch.device("cpu")) == 16
    assert default_batch_size(torch.device("cuda")) == 32
