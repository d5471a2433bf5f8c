"""Tensor parallel, 2D (FSDP2 x TP) and HSDP layouts on CPU (gloo) through the CLI: loss
parity with one process, per-rank state, sharded checkpoints resumed across layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import MODEL, Runs, max_difference

from lightning_accel.checkpoints import consolidate_checkpoint
from lightning_accel.models import GPTLanguageModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Runs:
    return Runs(tmp_path_factory.mktemp("tensor_parallel"), small_corpus)


def test_tensor_parallel_on_two_ranks_follows_one_process(runs: Runs) -> None:
    single = runs.losses(runs.train("single", "cpu", 1))
    split = runs.losses(runs.train("tp", "tp_cpu", 2, data_parallel=1))
    assert len(split) == 20
    assert max_difference(single, split) < 1e-5


def test_2d_on_two_by_two_ranks_follows_one_process(runs: Runs) -> None:
    single = runs.losses(runs.train("single", "cpu", 1))
    two_d = runs.losses(runs.train("fsdp2_tp", "fsdp2_tp_cpu", 4, data_parallel=2))
    assert len(two_d) == 20
    assert max_difference(single, two_d) < 1e-5


def test_hsdp_on_two_by_two_ranks_follows_fsdp2_on_four(runs: Runs) -> None:
    fsdp = runs.losses(runs.train("fsdp2_4", "fsdp2_cpu", 4))
    hsdp = runs.losses(runs.train("hsdp", "hsdp_cpu", 4))
    assert len(hsdp) == 20
    assert max_difference(fsdp, hsdp) < 1e-5


def test_tensor_parallel_in_bf16_mixed_follows_one_process(runs: Runs) -> None:
    bf16 = "optimization.precision=bf16-mixed"
    single = runs.losses(runs.train("single_bf16", "cpu", 1, bf16))
    split = runs.losses(runs.train("tp_bf16", "tp_cpu", 2, bf16, data_parallel=1))
    assert runs.summary(runs.root / "tp_bf16")["precision"] == "bf16-mixed"
    assert max_difference(single, split) < 2e-2


def _split_parameters(model: GPTLanguageModel) -> int:
    """Parameters tensor parallelism splits: the blocks' column-wise layers whole, the
    row-wise layers' weights (their biases are added after the reduction, on every rank)."""
    return sum(
        layer.weight.numel() + (layer.bias.numel() if colwise else 0)
        for block in model.model.blocks
        for layer, colwise in (
            (block.attn.qkv, True),
            (block.attn.proj, False),
            (block.mlp[0], True),
            (block.mlp[2], False),
        )
    )


def test_a_tensor_parallel_rank_holds_half_of_the_split_layers(runs: Runs) -> None:
    single = runs.summary(runs.train("single", "cpu", 1))["model_state_bytes"]["parameters"]
    per_rank = runs.summary(runs.root / "tp")["model_state_bytes_per_rank"]
    model = GPTLanguageModel(**MODEL, seq_len=32)
    halved = _split_parameters(model) * 4 // 2  # fp32 bytes each rank does not hold
    full_state = runs.summary(runs.root / "single")["model_state_bytes_per_rank"][0]
    # parameters, gradients and two AdamW moments: four copies of what a rank holds
    assert single == sum(p.numel() for p in model.parameters()) * 4
    for rank_bytes in per_rank:
        assert rank_bytes == full_state - 4 * halved


def test_a_2d_checkpoint_resumes_under_tensor_parallel_and_consolidates(runs: Runs) -> None:
    uninterrupted = runs.losses(runs.train("fsdp2_tp", "fsdp2_tp_cpu", 4, data_parallel=2))
    first_half = runs.train(
        "fsdp2_tp_half", "fsdp2_tp_cpu", 4, "trainer.max_steps=10", data_parallel=2
    )
    checkpoint = first_half / "checkpoints" / "last.ckpt"
    resumed = runs.losses(
        runs.train("tp_resume", "tp_cpu", 2, f"ckpt_path={checkpoint}", data_parallel=1)
    )
    assert min(resumed) == 10 and len(resumed) == 10, "steps 10-19 only"
    assert max_difference(uninterrupted, resumed) < 1e-5
    single_file = consolidate_checkpoint(checkpoint, runs.root / "2d.ckpt")
    state = torch.load(single_file, map_location="cpu", weights_only=True)["state_dict"]
    GPTLanguageModel(**MODEL, seq_len=32).load_state_dict(state)  # strict: whole tensors
