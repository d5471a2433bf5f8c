"""Whether a run's convolutions train channels-last (NHWC): ``optimization.channels_last:
auto`` decided by the model and the layout, before anything is built for real.

Channels-last convolutions run faster on GPUs (tensor cores read NHWC) and on CPUs (oneDNN's
blocked kernels); on a CPU the image recipe measured 1.15x in one process and 1.09x on two
DDP ranks, and 1.37x and 1.13x under the ``fast`` profile (docs/benchmarks.md). They need
the weights whole: FSDP2 shards only contiguous parameters, and XLA chooses its own
layouts."""

from __future__ import annotations

from dataclasses import dataclass

from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    Strategy,
)
from torch import nn
from torch.nn.parameter import is_lazy

# The plan's layouts that keep every parameter whole on each rank.
WHOLE_WEIGHT_LAYOUTS = {"single": "one device", "ddp": "DDP"}
# The reason for a model the choice does not concern: recorded, not announced.
NO_CONVOLUTIONS = "the model has no convolution weights"


def has_convolution_weights(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-D convolution (lazy ones included) or another 4-D
    parameter, the only kind the channels-last memory format changes."""
    return any(isinstance(module, nn.Conv2d) for module in model.modules()) or any(
        parameter.dim() == 4 for parameter in model.parameters() if not is_lazy(parameter)
    )


def lazy_module_name(model: nn.Module) -> str | None:
    """The class name of a module of ``model`` whose parameters are still uninitialized
    (a ``Lazy*`` module before its first batch), which no memory format applies to."""
    for module in model.modules():
        if any(is_lazy(parameter) for parameter in module.parameters(recurse=False)):
            return type(module).__name__
    return None


@dataclass(frozen=True)
class ChannelsLastChoice:
    """Whether a run puts its convolutions (and its image batches) in channels-last memory
    format, and why."""

    enabled: bool
    reason: str


def channels_last_choice(
    model: nn.Module | None, accelerator: str, layout: str | None, strategy: str
) -> ChannelsLastChoice:
    """For ``channels_last: auto``: on where ``model`` has convolution weights and the run
    keeps them whole (``layout``, the plan's, one of :data:`WHOLE_WEIGHT_LAYOUTS`) on a CPU
    or CUDA ``accelerator``; off, with the reason, elsewhere. ``model`` None: it could not be
    built without memory, so it is not known to have convolutions."""
    if model is None:
        return ChannelsLastChoice(False, "the model cannot be inspected before the run")
    if not has_convolution_weights(model):
        return ChannelsLastChoice(False, NO_CONVOLUTIONS)
    if lazy := lazy_module_name(model):
        return ChannelsLastChoice(False, f"the model's {lazy} has no weights until its first batch")
    if accelerator in ("pjrt", "tpu", "xla"):
        return ChannelsLastChoice(False, "XLA chooses its own memory layouts")
    if accelerator not in ("cpu", "cuda"):
        return ChannelsLastChoice(False, "channels-last is chosen on CPUs and CUDA GPUs only")
    if layout is None:
        return ChannelsLastChoice(
            False, f"strategy {strategy} is not known to keep the weights whole (one device, DDP)"
        )
    if layout not in WHOLE_WEIGHT_LAYOUTS:
        return ChannelsLastChoice(
            False,
            f"the {layout} layout shards the weights, and FSDP2 shards only contiguous ones",
        )
    return ChannelsLastChoice(
        True,
        f"convolution weights kept whole on {WHOLE_WEIGHT_LAYOUTS[layout]}: channels-last "
        "convolutions run the faster kernels",
    )


def strategy_layout(strategy: Strategy) -> str | None:
    """The plan's layout a Lightning ``strategy`` keeps the weights in, where it is one of
    :data:`WHOLE_WEIGHT_LAYOUTS` (one device, DDP); None for any other strategy (FSDP,
    DeepSpeed, model parallel: not known to keep them whole)."""
    if isinstance(strategy, SingleDeviceStrategy):
        return "single"
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
        return "ddp"
    return None


def strategy_channels_last_choice(model: nn.Module, strategy: Strategy) -> ChannelsLastChoice:
    """``channels_last: auto`` for a Trainer built without the runner: decided at ``setup``
    from the model and the strategy the Trainer runs it under."""
    name = getattr(strategy, "strategy_name", type(strategy).__name__)
    return channels_last_choice(model, strategy.root_device.type, strategy_layout(strategy), name)
