"""DDP with tuned defaults and communication hooks chosen by name."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

from lightning_accel.config import require_positive
from lightning_accel.strategies.agreed_stop import AgreedStopMixin
from lightning_accel.strategies.comm_hooks import CommStats, resolve_comm_hook
from lightning_accel.strategies.group_exit import GroupClosedAtExit
from lightning_accel.strategies.held_out import HeldOutDealing


class AccelDDPStrategy(HeldOutDealing, AgreedStopMixin, GroupClosedAtExit, DDPStrategy):
    """Lightning's DDP with the backend taken from the device (NCCL on CUDA, gloo on CPU),
    buckets used as gradient views, and a communication hook picked by name on any backend.

    Registered as ``"accel_ddp"``: ``Trainer(strategy="accel_ddp")`` after
    ``import lightning_accel``.

    Args:
        comm_hook: ``none``, ``fp16``, ``bf16`` (gradients all-reduced in half precision,
            half the bytes) or ``powersgd`` (low-rank compression).
        powersgd_rank: PowerSGD's matrix approximation rank.
        powersgd_start_iter: steps of plain all-reduce before PowerSGD starts.
        bucket_cap_mb: DDP bucket size.
        gradient_as_bucket_view: let gradients alias the buckets (saves a copy and memory).
        static_graph: declare that the graph is the same every step (enables more overlap;
            only safe when no parameter is conditionally unused).
        timeout_s: how long a collective may wait for a peer before the rank fails.
        **kwargs: anything else :class:`~lightning.pytorch.strategies.DDPStrategy` takes.
    """

    strategy_name = "accel_ddp"

    def __init__(
        self,
        comm_hook: str = "none",
        powersgd_rank: int = 1,
        powersgd_start_iter: int = 10,
        bucket_cap_mb: float = 25.0,
        gradient_as_bucket_view: bool = True,
        static_graph: bool = False,
        timeout_s: float = 1800.0,
        **kwargs: Any,
    ) -> None:
        require_positive("hardware.strategy_options.timeout_s", timeout_s)
        require_positive("hardware.strategy_options.bucket_cap_mb", bucket_cap_mb)
        state, hook = resolve_comm_hook(comm_hook, powersgd_rank, powersgd_start_iter)
        super().__init__(
            timeout=timedelta(seconds=timeout_s),
            bucket_cap_mb=bucket_cap_mb,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
            **kwargs,
        )
        self._comm_state, self._comm_hook = state, hook

    def allreduce_bytes_per_step(self) -> float | None:
        """Gradient bytes each rank sends to all-reduce per optimizer step: counted by the
        compression hooks, the gradients' own size without a hook, unknown for PowerSGD."""
        if isinstance(self._comm_state, CommStats):
            steps = self.lightning_module.trainer.global_step if self.lightning_module else 0
            return self._comm_state.bytes / max(1, steps)
        if self._comm_hook is None and self.model is not None:
            return float(
                sum(
                    p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad
                )
            )
        return None

    @override
    def configure_ddp(self) -> None:
        super().configure_ddp()
        # Lightning registers hooks on CUDA only; these hooks work on gloo too.
        if self._comm_hook is not None and self.model is not None:
            self.model.register_comm_hook(self._comm_state, self._comm_hook)
