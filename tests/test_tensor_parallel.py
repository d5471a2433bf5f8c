"""Tensor parallel, 2D (FSDP2 x TP) and HSDP layouts on CPU (gloo) through the CLI: loss
parity with one process, per-rank state, sharded checkpoints resumed across layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import ACCUMULATE, MODEL, SHAPE, TEST_IMPORTS, Runs, max_difference, run_cli

from lightning_accel.data.tokens import token_batch_example
from lightning_accel.flops import STEP_FLOPS_PER_FORWARD_FLOP, flop_counter
from lightning_accel.models import GPTLanguageModel
from lightning_accel.plan import attach_trainer, measure_footprint, meta_model
from lightning_accel.plan.footprint import ModelFootprint, tensor_parallel_footprint
from lightning_accel.plan.layouts import Placement, rank_memory
from lightning_accel.strategies.mesh import MeshShape

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("reference", "candidate"),
    [
        (("single", "cpu", 1, 1), ("tp", "tp_cpu", 2, 1)),
        (("single", "cpu", 1, 1), ("fsdp2_tp", "fsdp2_tp_cpu", 4, 2)),
        (("fsdp2_4", "fsdp2_cpu", 4, 4), ("hsdp", "hsdp_cpu", 4, 4)),
    ],
    ids=["tp 2 vs one process", "2d 2x2 vs one process", "hsdp 2x2 vs fsdp2 4"],
)
def test_a_layout_follows_its_reference_over_20_steps(
    runs: Runs, reference: tuple[str, str, int, int], candidate: tuple[str, str, int, int]
) -> None:
    """Each run is (name, hardware profile, ranks, data-parallel ranks)."""
    (name, hardware, ranks, data_parallel), expected = candidate, reference
    expected_losses = runs.losses(runs.train(*expected[:3], data_parallel=expected[3]))
    losses = runs.losses(runs.train(name, hardware, ranks, data_parallel=data_parallel))
    assert len(losses) == 20
    assert max_difference(expected_losses, losses) < 1e-5


def test_2d_in_bf16_mixed_follows_one_process(runs: Runs) -> None:
    """bf16-mixed under FSDP2 x TP: FSDP2's mixed-precision policy over DTensor shards."""
    bf16 = "optimization.precision=bf16-mixed"
    single = runs.losses(runs.train("single_bf16", "cpu", 1, bf16))
    split = runs.losses(runs.train("2d_bf16", "fsdp2_tp_cpu", 4, bf16, data_parallel=2))
    assert runs.summary(runs.root / "2d_bf16")["precision"] == "bf16-mixed"
    assert len(split) == 20
    assert max_difference(single, split) < 2e-2


def _footprint() -> ModelFootprint:
    """The plan's footprint of the runs' model (built anew on the meta device)."""
    config = {"_target_": "lightning_accel.models.GPTLanguageModel", **MODEL, "seq_len": 32}
    meta = meta_model(config)
    attach_trainer(meta, max_steps=20)
    return measure_footprint(meta, token_batch_example(4, 32))


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
    tp = runs.summary(runs.train("tp", "tp_cpu", 2, data_parallel=1))
    per_rank = tp["model_state_bytes_per_rank"]
    model = GPTLanguageModel(**MODEL, seq_len=32)
    halved = _split_parameters(model) * 4 // 2  # fp32 bytes each rank does not hold
    full_state = runs.summary(runs.root / "single")["model_state_bytes_per_rank"][0]
    # parameters, gradients and two AdamW moments: four copies of what a rank holds
    assert single == sum(p.numel() for p in model.parameters()) * 4
    for rank_bytes in per_rank:
        assert rank_bytes == full_state - 4 * halved
    # the plan predicts what each rank holds (weights, gradients, AdamW) before anything runs
    split = tensor_parallel_footprint(model)
    assert split is not None and split.split_elements == _split_parameters(model)
    footprint = _footprint()
    predicted = rank_memory(footprint, Placement("tp", 2, "32-true", mesh=MeshShape(tensor=2)))
    assert 2 * predicted.parameters + predicted.optimizer == per_rank[0]


@pytest.mark.parametrize(
    ("name", "hardware", "ranks", "data_parallel"),
    [
        ("2d", "fsdp2_tp_cpu", 4, 2),
        ("tp", "tp_cpu", 2, 1),
        ("ddp", "ddp_cpu", 2, 2),
        ("single", "cpu", 1, 1),
    ],
)
def test_an_fsdp2_checkpoint_resumes_under_another_layout(
    runs: Runs, name: str, hardware: str, ranks: int, data_parallel: int
) -> None:
    uninterrupted = runs.train("fsdp2_4", "fsdp2_cpu", 4)
    checkpoint = runs.checkpoint(uninterrupted, step=10)
    resumed = runs.train(
        f"{name}_from_fsdp2_4", hardware, ranks, f"ckpt_path={checkpoint}",
        data_parallel=data_parallel,
    )  # fmt: skip
    losses = runs.losses(resumed)
    assert min(losses) == 10 and len(losses) == 10, "steps 10-19 only"
    assert max_difference(runs.losses(uninterrupted), losses) < 1e-5
    expected = runs.final_weights(uninterrupted)
    for key, value in runs.final_weights(resumed).items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-5, msg=key)


def test_2d_predicts_one_file_per_data_parallel_rank_as_one_process_predicts(
    runs: Runs, tmp_path: Path
) -> None:
    # each tensor-parallel pair predicts the same samples: its first rank writes them, under
    # its data-parallel rank (the files were named by global rank, so predictions-rank1.pt
    # was the first pair's copy, not the second data-parallel rank's samples)
    checkpoint = runs.checkpoint(runs.train("single", "cpu", 1), step=10)

    def predicted(hardware: str, batch: int) -> Path:
        run_dir = tmp_path / hardware
        args = ["predict", *SHAPE, f"data.source={runs.corpus}", f"data.batch_size={batch}"]
        args += [f"hardware={hardware}", "callbacks=minimal", "logger=none"]
        args += ["trainer.limit_predict_batches=3", f"ckpt_path={checkpoint}"]
        result = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    def next_tokens(run_dir: Path, rank: int) -> torch.Tensor:
        batches = torch.load(run_dir / f"predictions-rank{rank}.pt", weights_only=True)
        return torch.cat([batch["next_tokens"] for batch in batches])

    in_one = next_tokens(predicted("cpu", 8), 0)
    on_2d = predicted("fsdp2_tp_cpu", 4)
    assert sorted(p.name for p in on_2d.glob("predictions-*")) == [
        "predictions-rank0.pt",
        "predictions-rank1.pt",
    ]
    for rank in (0, 1):  # held-out sample i: the (i div 2)-th of data-parallel rank i mod 2
        torch.testing.assert_close(next_tokens(on_2d, rank), in_one[rank::2])


@pytest.mark.parametrize(
    ("name", "hardware", "ranks", "data_parallel"),
    [("tp", "tp_cpu", 2, 1), ("fsdp2_tp", "fsdp2_tp_cpu", 4, 2), ("hsdp", "hsdp_cpu", 4, 4)],
)
def test_a_tp_2d_or_hsdp_checkpoint_consolidates_into_whole_weights(
    runs: Runs, name: str, hardware: str, ranks: int, data_parallel: int
) -> None:
    reference = runs.final_weights(runs.train("single", "cpu", 1))
    weights = runs.final_weights(runs.train(name, hardware, ranks, data_parallel=data_parallel))
    GPTLanguageModel(**MODEL, seq_len=32).load_state_dict(weights)  # strict: whole tensors
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-4, msg=key)


def test_layouts_compose_with_checkpointing_compile_and_accumulation(runs: Runs) -> None:
    """Activation checkpointing and per-block compile are applied before the tensor parallel
    split and the FSDP2 sharding (2D); accumulating two half batches under TP gives the
    update of one whole batch."""
    plain = runs.losses(runs.train("fsdp2_tp", "fsdp2_tp_cpu", 4, data_parallel=2))
    optimized = runs.train(
        "2d_ac_compile",
        "fsdp2_tp_cpu",
        4,
        "optimization.activation_checkpointing.enabled=true",
        "optimization.compile.enabled=true",
        "optimization.compile.per_block=true",
        "optimization.compile.backend=eager",
        data_parallel=2,
    )
    assert max_difference(plain, runs.losses(optimized)) < 1e-5
    order = ["activation_checkpointing", "compile", "tensor_parallel", "fsdp2"]
    assert runs.summary(optimized)["transforms"] == order
    reference = runs.final_weights(runs.train("single", "cpu", 1))
    accumulated = runs.train("tp_accumulate", "tp_cpu", 2, *ACCUMULATE, "data.batch_size=4")
    assert runs.summary(accumulated)["steps"] == 20
    assert runs.summary(accumulated)["transforms"] == ["tensor_parallel"]
    weights = runs.final_weights(accumulated)
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-5, msg=key)


def _user_model_run(runs: Runs, name: str, hardware: str, ranks: int) -> dict[int, float]:
    """20 steps of a user's Llama-style model (no plan of its own) on the custom recipe."""
    run_dir = runs.root / name
    args = ["train", "recipe=custom", "model._target_=helpers.UserLanguageModel"]
    args += ["data._target_=lightning_accel.data.TokenDataModule", f"+data.source={runs.corpus}"]
    args += [f"+model.{key}={value}" for key, value in {**MODEL, "seq_len": 32}.items()]
    args += ["+data.seq_len=32", "+data.batch_size=8", "trainer.max_steps=20"]
    args += ["trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "callbacks=minimal"]
    args += [f"hardware={hardware}", f"hardware.devices={ranks}", f"hydra.run.dir={run_dir}"]
    result = run_cli(args, cwd=runs.root, timeout=300, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs.losses(run_dir)


def test_a_users_model_is_split_by_shape_and_follows_one_process(runs: Runs) -> None:
    single = _user_model_run(runs, "user_single", "cpu", 1)
    split = _user_model_run(runs, "user_tp", "tp_cpu", 2)
    assert len(split) == 20
    assert max_difference(single, split) < 1e-5
    assert single[19] < single[0] - 0.3, "and the model learns"


def test_a_tensor_parallel_rank_counts_the_flops_it_computes(runs: Runs) -> None:
    single = runs.summary(runs.train("single", "cpu", 1))["flops_per_step"]
    split = runs.summary(runs.train("tp", "tp_cpu", 2, data_parallel=1))["flops_per_step"]
    model = GPTLanguageModel(**MODEL, seq_len=32).model
    with flop_counter() as counter:
        model(torch.zeros(8, 32, dtype=torch.long))
    counts = counter.get_flop_counts()
    blocks = sum(sum(counts[f"GPT.blocks.{i}"].values()) for i in range(MODEL["n_layer"]))
    total = sum(counts["Global"].values())
    assert single == STEP_FLOPS_PER_FORWARD_FLOP * total
    # the blocks are split in two; embeddings and the output layer run whole on each rank
    assert split == STEP_FLOPS_PER_FORWARD_FLOP * (total - blocks // 2)


def test_throughput_counts_a_tensor_parallel_groups_shared_batch_once(runs: Runs) -> None:
    tp = runs.summary(runs.train("tp", "tp_cpu", 2, data_parallel=1))
    two_d = runs.summary(runs.train("fsdp2_tp", "fsdp2_tp_cpu", 4, data_parallel=2))
    # 8 samples a step: the TP pair shares them; in 2D, each of the two pairs takes 4
    assert tp["samples_per_second"] == pytest.approx(8 / tp["step_seconds"], rel=0.01)
    assert two_d["samples_per_second"] == pytest.approx(8 / two_d["step_seconds"], rel=0.01)


# (name, hardware profile, ranks, data-parallel ranks): every layout of the CPU twins
EVERY_LAYOUT = [
    ("single", "cpu", 1, 1),
    ("ddp", "ddp_cpu", 2, 2),
    ("fsdp2", "fsdp2_cpu", 2, 2),
    ("tp", "tp_cpu", 2, 1),
    ("fsdp2_tp", "fsdp2_tp_cpu", 4, 2),
    ("hsdp", "hsdp_cpu", 4, 4),
]


def test_mfu_per_device_is_its_own_flops_over_its_step_on_every_layout(runs: Runs) -> None:
    """Every layout reports a device's MFU as the FLOPs that device computes per step over
    its step time and its own peak (never the world's FLOPs, never the mesh's peak), and
    data-parallel ranks count exactly their share of the one-process step's FLOPs."""
    single = runs.summary(runs.train("single", "cpu", 1))["flops_per_step"]
    for name, hardware, ranks, data_parallel in EVERY_LAYOUT:
        summary = runs.summary(runs.train(name, hardware, ranks, data_parallel=data_parallel))
        peak = summary["peak_tflops_per_device"] * 1e12
        achieved = summary["flops_per_step"] / summary["step_seconds"]
        assert summary["mfu"] == pytest.approx(achieved / peak, rel=0.01), name
        tensor_parallel = ranks // data_parallel
        if tensor_parallel == 1:
            assert summary["flops_per_step"] * ranks == single, name
        else:  # each TP rank computes half of the blocks and the whole embeddings and head
            replica = summary["flops_per_step"] * tensor_parallel
            assert single / data_parallel < replica < 1.5 * single / data_parallel, name
