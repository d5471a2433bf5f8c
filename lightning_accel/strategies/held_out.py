"""Evaluation loaders of one's own read every held-out sample once on several ranks."""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler
from typing_extensions import override

from lightning_accel.data.loading import deal_held_out

# the samplers Lightning puts into a validation, test or predict DataLoader of N ranks
LIGHTNINGS_SAMPLERS = (
    DistributedSampler,
    DistributedSamplerWrapper,
    UnrepeatedDistributedSamplerWrapper,
)
EVALUATING = (
    RunningStage.SANITY_CHECKING,
    RunningStage.VALIDATING,
    RunningStage.TESTING,
    RunningStage.PREDICTING,
)


class HeldOutDealing:
    """Strategy mixin: a validation, test or predict DataLoader that Lightning gave its
    distributed sampler (any loader of one's own with a sampler in order, as
    ``DataLoader(dataset, batch_size=...)`` has) reads each sample once over the ranks, in
    the same number of batches on every rank, as the pack's DataModules read theirs (see
    :func:`~lightning_accel.data.loading.deal_held_out`). Lightning's samplers repeat up to
    a rank's worth of samples in validation and test, so N ranks' metrics differed from one
    process's; in predict they may give some ranks a batch more, on which FSDP2 and tensor
    parallelism waited until the collective timed out. A shuffled sampler, or one of
    another class, is left as it is. Put it before the Lightning strategy among the bases.
    """

    @override
    def process_dataloader(self, dataloader: Any) -> Any:
        trainer = self.lightning_module.trainer  # type: ignore[attr-defined]
        # the batch sampler's: in predict Lightning gives the loader a batch sampler of its
        # own around its sampler, and the loader's batch_size and sampler say nothing of it
        batches = getattr(dataloader, "batch_sampler", None)
        sampler = getattr(batches, "sampler", None)
        batch_size = getattr(batches, "batch_size", None)
        if (
            trainer.state.stage in EVALUATING
            and isinstance(dataloader, DataLoader)
            and batch_size is not None
            and type(sampler) in LIGHTNINGS_SAMPLERS
            and not sampler.shuffle  # type: ignore[union-attr]
        ):
            deal_held_out(sampler, batch_size)  # type: ignore[arg-type]
        return super().process_dataloader(dataloader)  # type: ignore[misc]
