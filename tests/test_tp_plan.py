"""Tensor parallel plans and device meshes, decided without any process: which modules are
split and how, what is refused, and how mesh sizes fill the world."""

from __future__ import annotations

import pytest
import torch
from helpers import UserTransformer
from torch import nn

from lightning_accel.errors import ConfigError
from lightning_accel.models.gpt import GPT, GPTConfig
from lightning_accel.strategies.mesh import MeshShape, resolve_mesh
from lightning_accel.strategies.tensor_parallel import (
    canonical_path,
    check_divisible,
    plan_by_shape,
    resolve_plan,
)


def test_the_gpt_declares_megatron_style_splits_with_sequence_parallel_norms() -> None:
    plan = resolve_plan(GPT(GPTConfig(n_layer=2)))
    assert plan.styles["blocks.1.attn.qkv"] == "colwise"
    assert plan.styles["blocks.1.attn.proj"] == "rowwise"
    assert plan.styles["blocks.0.mlp.0"] == "colwise" and plan.styles["blocks.0.mlp.2"] == "rowwise"
    assert plan.styles["blocks.0.attn_norm"] == "sequence_parallel"
    assert plan.blocks == ("blocks.0", "blocks.1") and plan.sequence_parallel
    assert "head" not in plan.styles and "token_embedding" not in plan.styles


def test_a_one_layer_gpt_splits_its_layer_not_the_linear_layers_inside_it() -> None:
    plan = resolve_plan(GPT(GPTConfig(n_layer=1)))
    assert plan.blocks == ("blocks.0",) and plan.sequence_parallel
    assert plan.styles["blocks.0.attn.qkv"] == "colwise"
    assert plan.styles["blocks.0.mlp.2"] == "rowwise"


def test_a_users_blocks_are_split_by_shape() -> None:
    plan = resolve_plan(UserTransformer(vocab_size=64, width=32, depth=2, num_heads=4))
    layer = {path.removeprefix("layers.1."): style for path, style in plan.styles.items()}
    assert {k: v for k, v in layer.items() if not k.startswith("layers.")} == {
        "attention.q": "colwise",
        "attention.k": "colwise",
        "attention.v": "colwise",
        "attention.out": "rowwise",
        "feed_forward.gate": "colwise",
        "feed_forward.up": "colwise",
        "feed_forward.down": "rowwise",
        "attention_norm": "sequence_parallel",
        "ffn_norm": "sequence_parallel",
    }


class FusedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n_head = 2
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)


class FusedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(8), FusedAttention()


def test_a_fused_query_key_value_layer_of_unknown_layout_is_refused() -> None:
    model = nn.Sequential(FusedBlock(), FusedBlock())
    with pytest.raises(ConfigError, match="tensor_parallel_plan.*query, key and value with one"):
        plan_by_shape(model)


def test_a_configured_plan_wins_and_reaches_through_checkpoint_wrappers() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = GPT(GPTConfig(n_layer=2))
    model.blocks[0] = checkpoint_wrapper(model.blocks[0])
    plan = resolve_plan(model, {"blocks.*.mlp.0": "colwise", "blocks.*.mlp.2": "rowwise"})
    assert plan.styles == {
        "blocks.0.mlp.0": "colwise",
        "blocks.0.mlp.2": "rowwise",
        "blocks.1.mlp.0": "colwise",
        "blocks.1.mlp.2": "rowwise",
    }
    assert not plan.sequence_parallel
    assert canonical_path("blocks.0._checkpoint_wrapped_module.mlp") == "blocks.0.mlp"


@pytest.mark.parametrize(
    ("size", "config", "message"),
    [
        (
            3,
            GPTConfig(d_model=100, n_head=4),
            "does not divide the width 100 of blocks.0.attn.proj",
        ),
        (8, GPTConfig(d_model=128, n_head=4), "does not divide blocks.0.attn.n_head=4"),
    ],
)
def test_a_size_that_does_not_divide_widths_or_heads_names_the_key(
    size: int, config: GPTConfig, message: str
) -> None:
    model = GPT(config)
    with pytest.raises(ConfigError, match="tensor_parallel") as error:
        check_divisible(model, resolve_plan(model), size)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("world", "sizes", "shape"),
    [
        (4, (1, -1, 1), MeshShape(1, 4, 1)),
        (4, (1, -1, 2), MeshShape(1, 2, 2)),
        (2, (1, 1, -1), MeshShape(1, 1, 2)),
        (8, (2, -1, 1), MeshShape(2, 4, 1)),
    ],
)
def test_one_open_size_takes_what_the_others_leave(
    world: int, sizes: tuple[int, int, int], shape: MeshShape
) -> None:
    assert resolve_mesh(world, *sizes) == shape


def test_mesh_layouts_are_named() -> None:
    assert [MeshShape(1, 4, 1).layout, MeshShape(1, 1, 2).layout] == ["fsdp2", "tp"]
    assert [MeshShape(1, 2, 2).layout, MeshShape(2, 2, 1).layout] == ["fsdp2_tp", "hsdp"]


def test_each_mesh_takes_its_parallel_steps_in_order() -> None:
    """TP alone never shards; FSDP2 alone (even on one rank) never splits; 2D does both."""
    steps = [MeshShape(*sizes).parallel_steps for sizes in ((1, 1, 2), (1, 1, 1), (1, 2, 2))]
    assert steps == [("tensor_parallel",), ("fsdp2",), ("tensor_parallel", "fsdp2")]
    assert MeshShape(2, 2, 1).parallel_steps == ("fsdp2",)


@pytest.mark.parametrize(
    ("world", "sizes", "message"),
    [
        (4, (1, 3, 1), "multiplies to 3, not the world size 4"),
        (4, (-1, -1, 1), "second size of -1"),
        (4, (1, 0, 1), "must be a positive size or -1"),
        (8, (2, 2, 2), "cannot be combined with data_parallel_replicate"),
    ],
)
def test_a_mesh_that_does_not_fit_the_world_is_refused(
    world: int, sizes: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(ConfigError, match="hardware.strategy_options") as error:
        resolve_mesh(world, *sizes)
    assert message in str(error.value)


def test_a_plan_by_shape_sees_through_checkpointed_and_compiled_blocks() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain = resolve_plan(UserTransformer(vocab_size=64, width=32, depth=2, num_heads=4))
    model = UserTransformer(vocab_size=64, width=32, depth=2, num_heads=4)
    for index, layer in enumerate(model.layers):
        model.layers[index] = torch.compile(checkpoint_wrapper(layer), backend="eager")
    wrapped = resolve_plan(model)
    assert wrapped == plain
