"""Samplers and loaders: sampling modes, exact resumption inside an epoch, and loader
settings chosen per hardware."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from torch.utils.data import DistributedSampler

from lightning_accel import machine
from lightning_accel.cli import launch
from lightning_accel.data import loading
from lightning_accel.data.loading import (
    HeldOutShard,
    LoaderPlan,
    ResumableDataLoader,
    ResumableSampler,
    deal_held_out,
    loader_options,
)
from lightning_accel.data.worker_start import LoaderWorkerStart
from lightning_accel.errors import ConfigError
from lightning_accel.machine import CpuFacts, CudaDevice, CudaFacts, MachineFacts
from lightning_accel.plan.run import plan_run

H100 = CudaDevice(index=0, name="NVIDIA H100", capability=(9, 0), memory_gib=80)

DATASET = list(range(40))


def _batches(loader: ResumableDataLoader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


def test_shuffled_sampling_visits_every_index_once_in_a_seeded_order() -> None:
    first = list(ResumableSampler(DATASET, "shuffled", seed=3))
    assert sorted(first) == DATASET and first != DATASET
    assert first == list(ResumableSampler(DATASET, "shuffled", seed=3))
    assert first != list(ResumableSampler(DATASET, "shuffled", seed=4))


def test_sequential_sampling_keeps_the_order_and_splits_it_between_ranks() -> None:
    assert list(ResumableSampler(DATASET, "sequential")) == DATASET
    ranks = [list(ResumableSampler(DATASET, "sequential", num_replicas=2, rank=r)) for r in (0, 1)]
    assert ranks == [DATASET[0::2], DATASET[1::2]]


def test_random_sampling_draws_a_seeded_set_per_epoch() -> None:
    sampler = ResumableSampler(DATASET, "random", samples_per_epoch=10, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert len(epoch0) == len(epoch1) == 10
    assert epoch0 != epoch1
    assert all(0 <= i < len(DATASET) for i in epoch0 + epoch1)
    assert epoch0 == list(ResumableSampler(DATASET, "random", samples_per_epoch=10, seed=0))


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_held_out_shards_read_the_split_once_in_equal_numbers_of_batches(
    ranks: int, batch_size: int
) -> None:
    for size in range(0, 300, 7):
        shards = [list(HeldOutShard(range(size), batch_size, ranks, rank)) for rank in range(ranks)]
        assert len({-(-len(shard) // batch_size) for shard in shards}) == 1, "equal batches"
        # what one process reads with batch ranks * batch_size, whose batch j the ranks'
        # batches j make up; but a sample more for some ranks must not be a batch of its own
        spills = size % ranks and (size // ranks) % batch_size == 0
        read = size - size % ranks if spills else size
        assert shards == [list(range(rank, read, ranks)) for rank in range(ranks)]


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_lightnings_samplers_of_a_held_out_loader_dealt_read_as_held_out_shards(
    ranks: int, batch_size: int
) -> None:
    def makers(order: list[int]) -> list[Callable[[int], DistributedSampler]]:
        share = {"num_replicas": ranks, "shuffle": False}
        return [  # validation and test: an ordered loader's, another sampler's; predict
            lambda rank: DistributedSampler(range(len(order)), rank=rank, **share),
            lambda rank: DistributedSamplerWrapper(order, rank=rank, **share),
            lambda rank: UnrepeatedDistributedSamplerWrapper(order, rank=rank, **share),
        ]

    for size in range(ranks, 60, 5):
        order = list(range(size))[::-1]
        shards = [list(HeldOutShard(range(size), batch_size, ranks, r)) for r in range(ranks)]
        for index, make in enumerate(makers(order)):
            dealt = []
            for rank in range(ranks):
                sampler = make(rank)
                deal_held_out(sampler, batch_size)
                assert len(sampler) == len(shards[rank])
                dealt.append(list(sampler))
            positions = dealt if index == 0 else [[order.index(i) for i in d] for d in dealt]
            assert positions == shards, make


def test_unknown_sampling_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="data.sampling.*shuffled, sequential, random"):
        ResumableSampler(DATASET, "striped")  # type: ignore[arg-type]


def _loader(seed: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(DATASET, ResumableSampler(DATASET, seed=seed), batch_size=4)


def test_a_loader_restored_mid_epoch_yields_the_rest_of_that_epoch() -> None:
    reference = _loader()
    reference.sampler.set_epoch(2)
    expected = _batches(reference)
    interrupted = _loader()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_taken": 3}
    resumed = _loader()
    resumed.load_state_dict(state)
    assert _batches(resumed) == expected[3:]
    assert _batches(resumed) == expected, "the epoch after a resumed one is whole again"


def test_a_loader_read_ahead_of_the_trainer_saves_what_the_trainer_took() -> None:
    loader = _loader()
    loader.load_state_dict({"epoch": 0, "batches_taken": 2})
    iterator = iter(loader)
    for _ in range(5):  # a device loader's thread reads 5 batches ahead...
        next(iterator)
    # ...of which the trainer took 1: the position is the 2 skipped plus that one
    assert loader.state_dict(consumed=1) == {"epoch": 0, "batches_taken": 3}
    assert loader.state_dict() == {"epoch": 0, "batches_taken": 7}


def test_a_loader_saved_at_an_epoch_end_resumes_with_the_next_epoch() -> None:
    finished = _loader()
    _batches(finished)
    resumed = _loader()
    resumed.load_state_dict(finished.state_dict())
    following = _loader()
    following.sampler.set_epoch(1)
    assert _batches(resumed) == _batches(following)


def _trainer(accelerator: str, devices: int = 1) -> SimpleNamespace:
    kind = type(f"{accelerator.upper()}Accelerator", (), {})
    return SimpleNamespace(accelerator=kind(), num_devices=devices)


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "usable_cores", lambda: 8)


def test_auto_loader_on_a_cpu_uses_workers_only_for_decoding(eight_cores: None) -> None:
    cheap = loader_options(_trainer("cpu"))
    assert cheap == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    decoding = loader_options(_trainer("cpu", devices=2), decodes=True)
    assert decoding == {
        "num_workers": 2,
        "pin_memory": False,
        "persistent_workers": True,
        "worker_init_fn": LoaderWorkerStart(os.getpid()),
    }


def test_auto_loader_on_cuda_shares_the_cores_between_ranks_and_pins(eight_cores: None) -> None:
    options = loader_options(_trainer("cuda", devices=2), prefetch_factor=4)
    assert options == {
        "num_workers": 3,
        "pin_memory": True,
        "persistent_workers": True,
        "worker_init_fn": LoaderWorkerStart(os.getpid()),
        "prefetch_factor": 4,
    }
    assert loader_options(_trainer("xla", devices=1))["pin_memory"] is False


@pytest.mark.parametrize(
    ("machine", "profile", "expected"),
    [
        (MachineFacts(versions={}, cpu=CpuFacts(cores=8)), "cpu", LoaderPlan(0, 4, False)),
        (MachineFacts(versions={}, cpu=CpuFacts(cores=8)), "ddp_cpu", LoaderPlan(0, 2, False)),
        (
            MachineFacts(versions={}, cpu=CpuFacts(cores=16), cuda=CudaFacts(devices=(H100, H100))),
            "ddp",
            LoaderPlan(7, 7, True),
        ),
    ],
)
def test_the_run_plan_decides_the_loader_as_the_data_modules_apply_it(
    machine: MachineFacts, profile: str, expected: LoaderPlan, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_run(profile, "default", machine)
    assert plan.loader == expected
    monkeypatch.setattr(loading, "usable_cores", lambda: machine.cpu.cores)
    trainer = _trainer(plan.accelerator, plan.devices)
    for decodes in (False, True):
        options = loader_options(trainer, decodes=decodes)
        assert options["num_workers"] == plan.loader.workers_for(decodes)
        assert options["pin_memory"] == plan.loader.pin_memory


def test_explicit_loader_settings_win(eight_cores: None) -> None:
    options = loader_options(_trainer("cuda"), num_workers=1, pin_memory=False)
    assert options == {
        "num_workers": 1,
        "pin_memory": False,
        "persistent_workers": True,
        "worker_init_fn": LoaderWorkerStart(os.getpid()),
    }


class _WorkerSigterm(torch.utils.data.Dataset):
    """Whether the process reading each item ignores SIGTERM."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> bool:
        return signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_loader_workers_leave_sigterm_to_their_rank(eight_cores: None) -> None:
    """A SIGTERM to the whole process group must not end the workers before their rank
    reaches the step where every rank stops (tests/test_preemption.py runs it whole)."""
    options = loader_options(_trainer("cpu"), num_workers=1)
    ignored = [bool(b) for b in torch.utils.data.DataLoader(_WorkerSigterm(), **options)]
    assert ignored == [True, True]
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # this process still takes it


@pytest.mark.parametrize("workers", [-1, "many"])
def test_bad_worker_count_names_the_key(workers: object) -> None:
    with pytest.raises(ConfigError, match="data.num_workers"):
        loader_options(None, num_workers=workers)  # type: ignore[arg-type]


def test_more_workers_than_the_machine_can_run_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """data.num_workers=1000 started workers for minutes, each a process with its own
    state, before the first step."""
    monkeypatch.setattr(loading, "usable_cores", lambda: 2)
    assert loader_options(None, num_workers=8)["num_workers"] == 8
    with pytest.raises(ConfigError) as refused:
        loader_options(None, num_workers=9)
    assert str(refused.value).startswith(
        "data.num_workers=9 is more than the 8 loader processes (4 per core) this machine"
    )


def test_loader_batches_are_tensors_of_the_dataset() -> None:
    batch = next(iter(_loader()))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4,)


def test_an_epoch_cut_short_by_the_trainer_resumes_with_the_next_epoch_whole() -> None:
    # with limit_train_batches, Lightning ends the epoch early and sets the next one
    interrupted = _loader()
    iterator = iter(interrupted)
    for _ in range(3):
        next(iterator)
    resumed = _loader()
    resumed.load_state_dict(interrupted.state_dict())
    resumed.sampler.set_epoch(1)
    following = _loader()
    following.sampler.set_epoch(1)
    assert _batches(resumed) == _batches(following)


@pytest.mark.parametrize(
    ("content", "cores"), [("150000 100000\n", 2), ("max 100000\n", None), (None, None)]
)
def test_a_cgroup_cpu_quota_caps_the_usable_cores(
    tmp_path: Path, content: str | None, cores: int | None
) -> None:
    cpu_max = tmp_path / "cpu.max"
    if content is not None:
        cpu_max.write_text(content)
    assert machine.cgroup_cpu_limit(cpu_max) == cores


def test_rank_threads_follow_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: None)
    assert machine.usable_cores() == machine.available_devices("cpu") == 8
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: 6)
    assert machine.usable_cores() == 6
    with launch._rank_environment(processes=2):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ


_RANK_KILLED_WHILE_ITS_WORKER_STARTS = """
import os, sys, time
import torch
from lightning_accel.data.loading import loader_options

start = loader_options(None, num_workers=1)["worker_init_fn"]
gate = sys.argv[1]
if sys.argv[2] == "no pidfd":  # as on macOS; the workers inherit the module as it is
    del os.pidfd_open

def init(worker_id):
    with open(gate + ".worker", "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(gate):  # the test kills the rank meanwhile
        time.sleep(0.05)
    start(worker_id)

loader = torch.utils.data.DataLoader(list(range(4)), num_workers=1, worker_init_fn=init)
next(iter(loader))
"""


def _ended(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("watch", ["pidfd", "no pidfd"])
def test_a_worker_whose_rank_died_while_it_started_ends(tmp_path: Path, watch: str) -> None:
    """torch's watchdog takes the worker's parent after worker_init_fn: with the rank
    already gone it watched init instead, and the worker (ignoring SIGTERM) ran forever."""
    gate = tmp_path / "gate"
    gate.touch()
    code = _RANK_KILLED_WHILE_ITS_WORKER_STARTS
    rank = subprocess.Popen([sys.executable, "-c", code, gate, watch])
    worker_file = Path(f"{gate}.worker")
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not (worker_file.is_file() and worker_file.read_text()):
            assert rank.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.05)
        worker = int(worker_file.read_text())
        rank.kill()
        rank.wait(timeout=30)
        gate.unlink()
        deadline = time.monotonic() + 20
        while not _ended(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _ended(worker), "the worker outlived its rank"
    finally:
        rank.kill()
        if worker is not None and not _ended(worker):
            os.kill(worker, signal.SIGKILL)
