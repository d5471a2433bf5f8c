"""The pack's XLA strategies, registered with Lightning on import: ``xla_single`` (one
device), ``xla_processes`` (one process per device, also at one device) and ``xla_spmd``."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import SingleDeviceXLAStrategy, XLAStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from lightning_accel.strategies import register
from lightning_accel.strategies.held_out import HeldOutDealing
from lightning_accel.xla.device_loader import DeviceLoading
from lightning_accel.xla.spmd import XLASPMDStrategy


class XLASingleStrategy(DeviceLoading, SingleDeviceXLAStrategy):
    """Lightning's single-device XLA strategy, with batches copied ahead of the step by the
    parallel device loader (and mid-epoch resume kept). Registered as ``"xla_single"``.

    Args:
        device: index of the XLA device (default 0).
    """

    strategy_name = "xla_single"

    def __init__(self, device: int = 0, **kwargs: Any) -> None:  # noqa: D107 - see the class
        super().__init__(device=device, **kwargs)


class XLAProcessesStrategy(HeldOutDealing, DeviceLoading, XLAStrategy):
    """Lightning's multi-process XLA strategy (its launcher starts one process per device
    through torch_xla, gradients are all-reduced every step), with the pack's device loader,
    and also at one device: Lightning refuses one device under PJRT because early PJRT
    runtimes could not spawn a single process, but torch_xla's spawn now runs one device in
    the calling process. A held-out loader of one's own reads each sample once over the
    processes (:class:`~lightning_accel.strategies.held_out.HeldOutDealing`). Registered as
    ``"xla_processes"``."""

    strategy_name = "xla_processes"

    @override
    def setup_distributed(self) -> None:
        assert self.parallel_devices is not None
        if len(self.parallel_devices) > 1:
            super().setup_distributed()
        else:
            rank_zero_only.rank = self.global_rank


register(XLASingleStrategy, XLAProcessesStrategy, XLASPMDStrategy)
