"""The host allocator keeps freed memory for the next training step on the CPU."""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
from torch import nn

import lightning_accel.optimize.transforms as transforms
from lightning_accel.config import OptimizationConfig
from lightning_accel.optimize import apply_model_optimizations

# Training steps of a small GPT whose logits (64 x 128 x 2,048 floats, 64 MiB) and their
# gradients are larger than glibc's largest dynamic mmap threshold (32 MiB): with the
# allocator's defaults each is a fresh mmap faulted in page by page every step, whatever the
# allocation history (smaller blocks move between mmap and heap as the threshold adapts, so
# their faults per step came and went: 0 to 1,100 across windows of one run). Prints the
# page faults per step of 5 windows of 2 steps after a warm-up.
STEPS = """
import resource, sys, torch
import torch.nn.functional as F
from lightning_accel.host_allocator import keep_freed_host_memory
from lightning_accel.models import GPT, GPTConfig
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=2048, seq_len=128, n_layer=1, d_model=64, n_head=2))
optimizer = torch.optim.AdamW(model.parameters())
tokens = torch.randint(0, 2048, (64, 129))
def step():
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
"""
PAGES_OF_THE_LOGITS = (64 * 128 * 2048 * 4) // 4096


def page_faults_per_step(mode: str) -> float:
    """The median over the windows (the heap may still grow in one of them when kept)."""
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return statistics.median(float(line) for line in done.stdout.split())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    defaults, kept = page_faults_per_step("default"), page_faults_per_step("keep")
    # about 66,000 faults per step with the defaults, under 1 when kept
    assert defaults >= PAGES_OF_THE_LOGITS
    assert kept * 100 < defaults


@pytest.mark.parametrize(
    ("keep", "device", "calls"), [(True, "cpu", 1), (False, "cpu", 0), (True, "cuda", 0)]
)
def test_profile_decides_whether_the_cpu_run_keeps_freed_memory(
    monkeypatch: pytest.MonkeyPatch, keep: bool, device: str, calls: int
) -> None:
    applied: list[bool] = []
    monkeypatch.setattr(transforms, "keep_freed_host_memory", lambda: applied.append(True))
    optimization = OptimizationConfig(keep_freed_host_memory=keep)
    apply_model_optimizations(nn.Linear(2, 2), optimization, device, transforms=[])
    assert len(applied) == calls
