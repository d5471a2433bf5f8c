"""Float8 training with torchao: which Linear layers qualify, converting them to
``Float8Linear`` (the first model transform, as in torchtitan) and what a converted model
computes in."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lightning_accel.config import Float8Config
from lightning_accel.errors import ConfigError
from lightning_accel.precision import FLOAT8_INSTALL_HINT, FLOAT8_KEY

# torch._scaled_mm needs both dimensions of a float8 weight to be multiples of 16.
FEATURE_MULTIPLE = 16
# Against bf16 with the same per-block compile, float8 layers ran 0.70x as fast at width 768,
# 1.03x at 2,048 and 1.22x at 4,096 on an H200 (docs/benchmarks.md): below this the casts
# cost more than the float8 matmuls save.
BREAK_EVEN_FEATURES = 2048


def _tied_weights(model: nn.Module) -> set[int]:
    """Ids of the parameters more than one module holds (a head tied to an embedding)."""
    holders = Counter(
        id(parameter) for _, parameter in model.named_parameters(remove_duplicate=False)
    )
    return {key for key, count in holders.items() if count > 1}


def skip_reason(layer: nn.Linear, tied: set[int]) -> str | None:
    """Why ``layer`` stays in the run's precision rather than float8; None if it qualifies."""
    if layer.in_features % FEATURE_MULTIPLE or layer.out_features % FEATURE_MULTIPLE:
        return (
            f"{layer.in_features} -> {layer.out_features} features, not both multiples of "
            f"{FEATURE_MULTIPLE}"
        )
    if id(layer.weight) in tied:
        return "its weight is tied to another module's"
    return None


def float8_layers(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The Linear layers of ``model`` that float8 training converts (already converted ones
    included), and those it keeps, each with the reason."""
    tied = _tied_weights(model)
    converted: list[str] = []
    kept: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            reason = skip_reason(module, tied)
            if reason is None:
                converted.append(name)
            else:
                kept[name] = reason
    return converted, kept


def check_float8_layers(model: nn.Module) -> None:
    """Fail unless at least one Linear layer of ``model`` can train in float8.

    Raises:
        ConfigError: no Linear layer qualifies (the model's widths must change).
    """
    converted, kept = float8_layers(model)
    if converted:
        return
    example = next(iter(kept.items()), None)
    found = f" ({example[0]}: {example[1]})" if example else ""
    raise ConfigError(
        FLOAT8_KEY,
        True,
        f"finds no Linear layer of {type(model).__name__} to convert{found}; make the "
        f"model's widths multiples of {FEATURE_MULTIPLE} (model.d_model for the GPT recipe)",
    )


@contextmanager
def _quiet_import() -> Iterator[None]:
    """Importing torchao logs warnings that say nothing about float8 training: its CUDA
    kernels failing to load on a CPU-only torch, and a deprecation of torch's pytree."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def torchao_float8() -> Any:
    """torchao's ``float8`` module.

    Raises:
        ConfigError: torchao is not installed.
    """
    try:
        with _quiet_import():
            from torchao import float8
    except ImportError as error:
        raise ConfigError(FLOAT8_KEY, True, f"needs torchao: {FLOAT8_INSTALL_HINT}") from error
    return float8


def convert_to_float8(model: nn.Module, config: Float8Config, sharded: bool = False) -> list[str]:
    """Swap the qualifying Linear layers of ``model`` (:func:`float8_layers`) for torchao's
    ``Float8Linear`` in place, with ``config``'s recipe (and float8 all-gathers when FSDP2
    will shard the model, ``sharded``, and ``config`` asks for them with the tensorwise
    recipe, the one torchao all-gathers in float8); returns their names."""
    float8 = torchao_float8()
    check_float8_layers(model)
    converted, _ = float8_layers(model)
    wanted = set(converted)
    settings = float8.Float8LinearConfig.from_recipe_name(config.recipe)
    all_gather = sharded and config.fsdp_float8_all_gather and config.recipe == "tensorwise"
    settings = dataclasses.replace(
        settings, emulate=config.emulate, enable_fsdp_float8_all_gather=all_gather
    )
    float8.convert_to_float8_training(
        model, config=settings, module_filter_fn=lambda module, name: name in wanted
    )
    note = None if config.emulate else narrow_layers_note(model, converted)
    if note:
        rank_zero_warn(note)
    return converted


def narrow_layers_note(model: nn.Module, converted: list[str]) -> str | None:
    """Why the layers of ``converted`` are likely slower in float8 than in bf16: every one is
    narrower (the smaller of its in and out features) than :data:`BREAK_EVEN_FEATURES`;
    None when one is as wide."""
    modules = dict(model.named_modules())
    widest = max(min(modules[n].in_features, modules[n].out_features) for n in converted)
    if widest >= BREAK_EVEN_FEATURES:
        return None
    return (
        f"float8 layers of at most {widest} features (the smaller of in and out) are likely "
        f"slower than bf16: on an H200 float8 ran 0.70x bf16's speed at 768 and broke even "
        f"at about {BREAK_EVEN_FEATURES} (docs/precision.md)"
    )


def too_narrow_for_float8(model: nn.Module) -> str | None:
    """Why float8 would not pay on ``model`` whatever a trial measured: no Linear layer
    qualifies, or :func:`narrow_layers_note` applies; None otherwise."""
    converted, _ = float8_layers(model)
    if not converted:
        return f"no Linear layer of {type(model).__name__} can train in float8"
    return narrow_layers_note(model, converted)


def precompute_float8_scales(model: nn.Module) -> None:
    """Compute the scales of FSDP2's next float8 all-gathers for every converted weight of
    ``model`` at once (one all-reduce of their maxima, rather than one per weight), as
    torchtitan does after each optimizer step."""
    torchao_float8().precompute_float8_dynamic_scale_for_fsdp(model)


def _float8_linears(model: nn.Module) -> list[nn.Module]:
    """The converted layers of ``model`` (none while torchao was never imported)."""
    module_name = "torchao.float8.float8_linear"
    if module_name not in sys.modules:
        return []
    linear = sys.modules[module_name].Float8Linear
    return [module for module in model.modules() if isinstance(module, linear)]


def float8_matmul_format(model: nn.Module) -> str | None:
    """The number format ``model``'s converted layers multiply in: ``fp8`` on float8 tensor
    cores, ``fp32`` under torchao's emulation; None for a model without any."""
    layers = _float8_linears(model)
    if not layers:
        return None
    return "fp32" if layers[0].config.emulate else "fp8"


def float8_all_gathers(model: nn.Module) -> bool:
    """Whether FSDP2 all-gathers the converted weights of ``model`` in float8."""
    layers = _float8_linears(model)
    return bool(layers) and layers[0].config.enable_fsdp_float8_all_gather


def float8_summary(model: nn.Module) -> dict[str, Any] | None:
    """The converted layers of ``model`` and those kept in the run's precision (with their
    reasons), for the run summary; None for a model without converted layers."""
    layers = _float8_linears(model)
    if not layers:
        return None
    converted = {id(module) for module in layers}
    _, kept = float8_layers(model)
    config = layers[0].config
    return {
        "layers": [name for name, module in model.named_modules() if id(module) in converted],
        "kept": kept,
        "emulated": config.emulate,
        "fsdp_float8_all_gather": config.enable_fsdp_float8_all_gather,
    }
