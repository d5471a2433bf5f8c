"""Model transforms: block detection, activation checkpointing parity, compile, channels_last."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TINY, run_cli
from torch import nn

from lightning_accel.config import (
    ActivationCheckpointingConfig,
    CompileConfig,
    OptimizationConfig,
)
from lightning_accel.errors import ConfigError
from lightning_accel.models import GPT, GPTConfig
from lightning_accel.models.resnet import ResNet
from lightning_accel.optimize import apply_model_optimizations, find_repeated_blocks

CONFIG = GPTConfig(seq_len=16, n_layer=4, d_model=32, n_head=2)


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    model(tokens).logsumexp(-1).mean().backward()
    # named_parameters (unlike state_dict) shows the checkpoint wrapper's own prefix
    return {
        name.replace("._checkpoint_wrapped_module", ""): p.grad.clone()
        for name, p in model.named_parameters()
    }


@pytest.mark.parametrize("layers", [4, 1])
def test_repeated_blocks_of_a_transformer_are_its_layers(layers: int) -> None:
    # one layer: its ModuleList holds the block, not the MLP's two linear layers
    model = GPT(GPTConfig(seq_len=16, n_layer=layers, d_model=32, n_head=2))
    assert find_repeated_blocks(model) == list(model.blocks)
    assert len(model.blocks) == layers


def test_activation_checkpointing_keeps_gradients_and_state_dict_keys() -> None:
    reference, checkpointed = _gpt(), _gpt()
    keys = list(reference.state_dict())
    apply_model_optimizations(
        checkpointed,
        OptimizationConfig(activation_checkpointing=ActivationCheckpointingConfig(True)),
    )
    assert all(type(b).__name__ == "CheckpointWrapper" for b in checkpointed.blocks)
    assert list(checkpointed.state_dict()) == keys
    expected, actual = _gradients(reference), _gradients(checkpointed)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-5, atol=1e-6)


def test_checkpointed_blocks_update_batch_norm_statistics_once_per_step() -> None:
    # the backward runs a checkpointed block again: BatchNorm updated its running statistics
    # at both runs, and the model validated with other ones than without checkpointing
    def trained(checkpointing: bool) -> ResNet:
        torch.manual_seed(0)
        model = ResNet(in_channels=1, widths=(8, 16), blocks_per_stage=2)
        config = ActivationCheckpointingConfig(checkpointing)
        apply_model_optimizations(model, OptimizationConfig(activation_checkpointing=config))
        images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(2):
            model(images).logsumexp(-1).mean().backward()
        return model

    reference, checkpointed = trained(False), trained(True)
    assert any(type(m).__name__ == "CheckpointWrapper" for m in checkpointed.modules())
    statistics = {k: v for k, v in reference.state_dict().items() if "running" in k}
    assert statistics, "the model has running statistics to compare"
    actual = checkpointed.state_dict()
    for name, value in reference.state_dict().items():
        if "running" in name or "num_batches_tracked" in name:
            torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=name)
    gradients = {
        name.replace("._checkpoint_wrapped_module", ""): p.grad
        for name, p in checkpointed.named_parameters()
    }
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(gradients[name], parameter.grad, rtol=1e-5, atol=1e-6)


def test_every_k_blocks_checkpoints_one_in_k() -> None:
    model = _gpt()
    apply_model_optimizations(
        model, OptimizationConfig(activation_checkpointing=ActivationCheckpointingConfig(True, 2))
    )
    wrapped = [type(b).__name__ == "CheckpointWrapper" for b in model.blocks]
    assert wrapped == [True, False, True, False]


def test_checkpointing_a_model_without_blocks_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        apply_model_optimizations(
            nn.Linear(2, 2),
            OptimizationConfig(activation_checkpointing=ActivationCheckpointingConfig(True)),
        )


def test_compile_in_place_keeps_outputs_and_keys() -> None:
    model = _gpt()
    holder = nn.Module()
    holder.model = model
    tokens = torch.randint(0, 256, (2, 16))
    expected = model(tokens)
    keys = list(holder.state_dict())
    apply_model_optimizations(
        holder, OptimizationConfig(compile=CompileConfig(True, backend="eager"))
    )
    assert model._compiled_call_impl is not None
    torch.testing.assert_close(holder.model(tokens), expected)
    assert list(holder.state_dict()) == keys, "no _orig_mod. prefix"


def test_channels_last_reformats_conv_weights() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    apply_model_optimizations(model, OptimizationConfig(channels_last=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_compile_per_block_compiles_each_block_in_place() -> None:
    model = _gpt()
    keys = list(model.state_dict())
    apply_model_optimizations(
        model, OptimizationConfig(compile=CompileConfig(True, backend="eager", per_block=True))
    )
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    assert model.token_embedding._compiled_call_impl is None
    assert list(model.state_dict()) == keys


def test_compiled_and_eager_runs_resume_from_each_others_checkpoints(
    tmp_path: Path, small_corpus: Path
) -> None:
    base = ["train", *TINY, f"data.source={small_corpus}", "callbacks=minimal", "logger=none"]
    compiled = ["optimization.compile.enabled=true", "optimization.compile.per_block=true"]
    first = {"compiled": compiled, "eager": []}
    for name, settings in first.items():
        result = run_cli([*base, *settings, f"hydra.run.dir={name}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    compiled_summary = json.loads((tmp_path / "compiled" / "summary.json").read_text())
    assert compiled_summary["compile_seconds"] is None, "4 steps: too short to separate"
    swaps = {"eager_from_compiled": ([], "compiled"), "compiled_from_eager": (compiled, "eager")}
    for name, (settings, source) in swaps.items():
        checkpoint = tmp_path / source / "checkpoints" / "last.ckpt"
        keys = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"].keys()
        assert not any("_orig_mod" in key for key in keys)
        args = [*base, *settings, f"ckpt_path={checkpoint}", "trainer.max_steps=6"]
        result = run_cli([*args, f"hydra.run.dir={name}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads((tmp_path / name / "summary.json").read_text())["steps"] == 6


def test_every_transform_runs_in_one_ordered_function_with_the_parallel_steps_last() -> None:
    from types import SimpleNamespace

    from lightning_accel.optimize import ModelOptimizations
    from lightning_accel.optimize.transforms import ShardsAfterTransforms

    optimization = OptimizationConfig(
        activation_checkpointing=ActivationCheckpointingConfig(enabled=True),
        compile=CompileConfig(enabled=True, backend="eager", per_block=True),
    )
    names = ("activation_checkpointing", "compile", "tensor_parallel", "fsdp2")
    strategy = SimpleNamespace(model_transforms=None, root_device=torch.device("cpu"))
    assert isinstance(strategy, ShardsAfterTransforms)
    model = _gpt()
    trainer = SimpleNamespace(strategy=strategy)
    ModelOptimizations(optimization, transforms=names).setup(trainer, model, "fit")
    assert strategy.model_transforms == (optimization, names), "handed to the strategy"
    assert type(model.blocks[0]) is type(_gpt().blocks[0]), "nothing applied by the callback"
    seen = []

    def step(name: str) -> Callable[[nn.Module], None]:  # what each strategy step sees
        return lambda module: seen.append(
            (name, [(type(b).__name__, b._compiled_call_impl is not None) for b in module.blocks])
        )

    parallelize = {"fsdp2": step("fsdp2"), "tensor_parallel": step("tensor_parallel")}
    apply_model_optimizations(model, optimization, "cpu", names, parallelize)
    blocks = [("CheckpointWrapper", True)] * CONFIG.n_layer
    assert seen == [("tensor_parallel", blocks), ("fsdp2", blocks)]
