"""``lightning-accel plan``: a model's footprint measured without memory, exact parameter
and optimizer-state figures, predicted peak memory against measured memory, the ranked
table for the default recipe and a user's module, and bad input."""

from __future__ import annotations

import json
import math
import resource
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import TEST_IMPORTS, LazyImageClassifier, run_cli
from hydra.utils import instantiate

from lightning_accel import build_trainer
from lightning_accel.callbacks.memory_probe import MemoryProbe
from lightning_accel.cli.main import main
from lightning_accel.config import ActivationCheckpointingConfig, OptimizationConfig
from lightning_accel.data import SyntheticTokenDataModule
from lightning_accel.errors import ConfigError
from lightning_accel.flops import flop_counter
from lightning_accel.models import GPTLanguageModel, ImageClassifier
from lightning_accel.plan import (
    attach_trainer,
    example_batch,
    measure_footprint,
    meta_model,
)
from lightning_accel.plan.fit import check_fits
from lightning_accel.plan.footprint import TensorParallelFootprint
from lightning_accel.plan.layouts import Placement, communication, rank_memory
from lightning_accel.strategies.mesh import MeshShape

GPT = {"_target_": "lightning_accel.models.GPTLanguageModel", "n_head": 4}
SINGLE = Placement("single", 1, "32-true")
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def _shape(n_layer: int, d_model: int, seq_len: int) -> dict:
    return {**GPT, "n_layer": n_layer, "d_model": d_model, "seq_len": seq_len}


def _footprint(n_layer: int, d_model: int, seq_len: int, batch: int, precisions: tuple):
    model = meta_model(_shape(n_layer, d_model, seq_len))
    data = {
        "_target_": "lightning_accel.data.SyntheticTokenDataModule",
        "batch_size": batch,
        "seq_len": seq_len,
    }
    example, through_forward = example_batch(instantiate(data), model)
    attach_trainer(model, max_steps=10)
    return measure_footprint(model, example, precisions, through_forward)


def test_parameters_optimizer_state_and_flops_match_the_real_model() -> None:
    footprint = _footprint(2, 64, 32, 4, ("32-true",))
    real = GPTLanguageModel(n_layer=2, d_model=64, n_head=4, seq_len=32)
    attach_trainer(real, max_steps=10)
    parameters = list(real.parameters())  # tied embedding and head weights once
    assert footprint.parameters == sum(p.numel() for p in parameters)
    assert footprint.parameter_bytes() == sum(p.numel() * 4 for p in parameters)
    optimizer = real.configure_optimizers()["optimizer"]
    tokens = torch.zeros(4, 32).long()
    torch.nn.functional.cross_entropy(real(tokens).flatten(0, 1), tokens.flatten()).backward()
    optimizer.step()
    state = sum(
        v.numel() * v.element_size()
        for s in optimizer.state.values()
        for v in s.values()
        if v.dim()
    )
    assert footprint.optimizer_state_per_parameter_byte * footprint.parameter_bytes() == state
    with flop_counter() as counter:
        real(torch.zeros(4, 32).long())
    assert footprint.forward_flops == counter.get_total_flops()
    assert len(footprint.unit_parameter_bytes) == 2, "one FSDP2 unit per transformer block"


def test_fsdp2_shards_are_counted_as_fsdp2_pads_them() -> None:
    footprint = _footprint(1, 64, 32, 4, ("32-true",))
    shards = footprint.sharded_parameter_bytes(3)
    shapes = footprint.parameter_shapes
    expected = sum(math.ceil(s[0] / 3) * math.prod(s[1:]) * 4 for s in shapes)
    assert shards == expected > footprint.parameter_bytes() / 3


def _mesh_placement(layout: str, replicate: int = 1, shard: int = 1, tensor: int = 1):
    mesh = MeshShape(replicate, shard, tensor)
    return Placement(layout, replicate * shard * tensor, "32-true", mesh=mesh)


def test_tensor_parallel_ranks_hold_a_slice_of_the_split_layers_and_the_rest_whole() -> None:
    footprint = _footprint(2, 64, 32, 4, ("32-true",))
    model = GPTLanguageModel(n_layer=2, d_model=64, n_head=4, seq_len=32)
    split_names = ("attn.qkv.", "attn.proj.weight", "mlp.0.", "mlp.2.weight")
    split = sum(p.numel() for n, p in model.named_parameters() if any(s in n for s in split_names))
    assert footprint.tensor_parallel.styles[:2] == (
        ("model.blocks.*.attn_norm", "sequence_parallel"),
        ("model.blocks.*.attn.qkv", "colwise"),
    )
    assert footprint.tensor_parallel == TensorParallelFootprint(
        split, (2, 4), 4, True, footprint.tensor_parallel.styles
    )
    whole = footprint.parameters
    tp = rank_memory(footprint, _mesh_placement("tp", tensor=2))
    assert tp.parameters == (whole - split // 2) * 4
    two_d = rank_memory(footprint, _mesh_placement("fsdp2_tp", shard=2, tensor=2))
    assert tp.parameters / 2 <= two_d.parameters <= tp.parameters / 2 * 1.01
    hsdp = rank_memory(footprint, _mesh_placement("hsdp", replicate=2, shard=2))
    assert hsdp.parameters == footprint.sharded_parameter_bytes(2)


def test_tensor_parallel_moves_the_hidden_state_twice_each_way_per_region() -> None:
    footprint = _footprint(2, 64, 32, 4, ("32-true",))
    hidden = 4 * 32 * 64 * 4  # batch x sequence x width, fp32
    sent = communication(footprint, _mesh_placement("tp", tensor=2))
    # 2 blocks x (attention, MLP); an all-gather and a reduce-scatter each way, half each
    assert (sent.exposed, sent.overlappable) == (4 * 4 * hidden / 2, 0)
    assert sent.collectives == 4 * 4
    # on gloo a reduce-scatter sends what an all-reduce does: twice a ring's bytes
    gloo = communication(footprint, _mesh_placement("tp", tensor=2), reduce_scatter_cost=2)
    assert gloo.exposed == 4 * (1 + 2) * 2 * hidden / 2
    fsdp2 = communication(footprint, Placement("fsdp2", 2, "32-true"))
    hsdp = communication(footprint, _mesh_placement("hsdp", replicate=2, shard=2))
    # HSDP gathers within its shard group of 2, as FSDP2 at 2 does, then all-reduces
    # the fp32 gradient shard between the two replicas
    replicas = 2 * (1 / 2) * footprint.parameters / 2 * 4
    assert hsdp.overlappable == pytest.approx(fsdp2.overlappable + replicas)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_predicted_peak_memory_is_within_10_percent_of_a_measured_step(
    precision: str, checkpointing: bool, tmp_path: Path
) -> None:
    footprint = _footprint(3, 96, 96, 8, (precision,))
    predicted = rank_memory(
        footprint, Placement("single", 1, precision, 1 if checkpointing else None)
    )
    probe = MemoryProbe(step=2)
    optimization = OptimizationConfig(
        precision=precision,
        activation_checkpointing=ActivationCheckpointingConfig(enabled=checkpointing),
    )
    trainer = build_trainer(
        "cpu", optimization, callbacks=[probe], max_steps=3, enable_checkpointing=False,
        default_root_dir=tmp_path, **QUIET,
    )  # fmt: skip
    pl.seed_everything(0, verbose=False)
    model = GPTLanguageModel(n_layer=3, d_model=96, n_head=4, seq_len=96)
    trainer.fit(model, datamodule=SyntheticTokenDataModule(batch_size=8, seq_len=96, samples=64))
    assert predicted.parameters == probe.peak["parameter_bytes"]
    assert predicted.optimizer == probe.peak["optimizer_state_bytes"]
    error = predicted.device_bytes / probe.peak["Total"] - 1
    assert abs(error) <= 0.10, f"predicted {predicted.device_bytes}, measured {probe.peak}"


def _plan(args: list[str], cwd: Path) -> dict:
    result = run_cli(["plan", "--json", *args], cwd=cwd, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_plan_ranks_the_default_recipes_layouts_and_names_the_best(tmp_path: Path) -> None:
    plan = _plan(["--world", "1,2,4"], tmp_path)
    rows = plan["layouts"]
    assert {(r["label"], r["world"]) for r in rows} == {
        ("single", 1), ("ddp", 2), ("fsdp2", 2), ("tp 2", 2), ("ddp", 4), ("fsdp2", 4),
        ("tp 4", 4), ("fsdp2_tp 2x2", 4), ("hsdp 2x2", 4),
    }  # fmt: skip
    fitting = [r for r in rows if r["fits"]]
    speeds = [r["samples_per_second"] for r in fitting]
    assert speeds == sorted(speeds, reverse=True)
    assert plan["best"] == rows[0]["overrides"]
    single = next(r for r in rows if r["layout"] == "single" and r["precision"] == "32-true")
    sharded = next(
        r for r in rows
        if r["layout"] == "fsdp2" and r["world"] == 4 and r["precision"] == "32-true"
        and r["activation_checkpointing"] is False
    )  # fmt: skip
    assert sharded["memory"]["parameters"] < single["memory"]["parameters"] / 3
    assert sharded["comm_bytes_per_step"] > 0 == single["comm_bytes_per_step"]
    assert plan["tensor_parallel_plan"]["model.blocks.*.attn.qkv"] == "colwise"
    assert plan["tensor_parallel_plan"]["model.blocks.*.mlp.2"] == "rowwise"
    two_d = next(r for r in rows if r["label"] == "fsdp2_tp 2x2")
    assert "hardware.strategy_options.tensor_parallel=2" in two_d["overrides"]
    assert two_d["memory"]["parameters"] < single["memory"]["parameters"] / 3
    assert list(tmp_path.iterdir()) == [], "plan writes nothing"
    assert plan["float8"] is None, "the default profile trains without float8"


def test_plan_says_its_estimates_leave_float8_out(tmp_path: Path) -> None:
    plan = _plan(["--device", "H100", "--world", "1", "optimization=fast"], tmp_path)
    assert plan["float8"].startswith(
        "optimization.fp8.enabled=auto: the estimates are of the model without float8"
    )
    assert {r["precision"] for r in plan["layouts"]} == {"32-true", "bf16-mixed"}


def test_plan_of_a_users_own_module_on_a_datasheet_device(tmp_path: Path) -> None:
    args = [
        "--device", "H100", "--world", "1,8", "recipe=custom",
        "model._target_=helpers.ExampleInputRegression", "+model.width=64",
        "data._target_=helpers.ForwardOnlyData",
    ]  # fmt: skip
    plan = _plan(args, tmp_path)
    assert plan["device"] == "H100 SXM"
    assert plan["parameters"] == 8 * 64 + 64 + 64 + 1
    # no repeated blocks: no tensor parallel plan; one node of 8: no HSDP
    assert {r["layout"] for r in plan["layouts"]} == {"single", "ddp", "fsdp2", "fsdp2_offload"}
    assert all(r["fits"] for r in plan["layouts"])


def test_plan_of_a_users_module_without_a_batch_description_reads_one_batch(
    tmp_path: Path,
) -> None:
    args = ["plan", "--json", "--world", "1", *_custom("TinyRegression")]
    result = run_cli(args, cwd=tmp_path, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    # Linear(8, 16) and Linear(16, 1) on the DataModule's first batch of 4 samples
    assert plan["parameters"] == 8 * 16 + 16 + 16 + 1
    assert plan["samples_per_rank"] == 4
    assert plan["forward_flops"] == 2 * 4 * (8 * 16 + 16 * 1)
    assert "helpers.ForwardOnlyData describes no batch without reading data: the model is " in (
        " ".join(result.stderr.split())
    )
    assert list(tmp_path.iterdir()) == [], "the plan writes nothing"


def test_plan_of_the_image_recipe_counts_the_resnet_exactly(tmp_path: Path) -> None:
    plan = _plan(["--world", "1", "recipe=image", "data.batch_size=16"], tmp_path)
    model = ImageClassifier(in_channels=1, num_classes=10, widths=[16, 32, 64], blocks_per_stage=2)
    assert plan["parameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan["samples_per_rank"] == 16
    single = next(r for r in plan["layouts"] if r["precision"] == "32-true")
    assert single["memory"]["parameters"] == 4 * plan["parameters"]
    assert single["memory"]["activations"] > 0 and plan["forward_flops"] > 0


def test_plan_of_a_model_with_lazy_layers_counts_them_as_its_first_batch_sizes_them(
    tmp_path: Path,
) -> None:
    args = [
        "--world", "1", "recipe=custom", "model._target_=helpers.LazyImageClassifier",
        "data._target_=lightning_accel.data.SyntheticImageDataModule", "+data.image_size=8",
    ]  # fmt: skip
    plan = _plan(args, tmp_path)
    model = LazyImageClassifier()
    model.net(torch.zeros(1, 3, 8, 8))
    assert plan["parameters"] == sum(p.numel() for p in model.parameters()) == 8 * 28 + 5130
    assert plan["forward_flops"] > 0


def test_plan_never_allocates_the_weights_of_a_7b_model(tmp_path: Path) -> None:
    args = [
        "--device", "H100", "--world", "1,8", "model.n_layer=32", "model.d_model=4096",
        "model.n_head=32", "data.seq_len=2048", "data.batch_size=1",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    plan = _plan(args, tmp_path)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert plan["parameters"] > 6e9
    assert max(before, peak_kib) < 4 * 2**20, "the plan process stayed under 4 GiB"
    fitting = {(r["layout"], r["world"]) for r in plan["layouts"] if r["fits"]}
    assert ("single", 1) not in {
        (r["layout"], r["world"])
        for r in plan["layouts"]
        if r["fits"] and r["precision"] == "32-true" and not r["activation_checkpointing"]
    }
    assert ("fsdp2", 8) in fitting


def test_a_model_that_fits_nowhere_names_the_smallest_world_that_fits(tmp_path: Path) -> None:
    args = [
        "plan", "--device", "L4", "--world", "1", "model.n_layer=32", "model.d_model=4096",
        "model.n_head=32", "data.seq_len=2048", "data.batch_size=1",
    ]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1
    assert "fits on no layout at world sizes 1 of L4; the smallest world that fits is 2" in (
        " ".join(result.stderr.split())
    )


def test_a_cpu_world_too_large_to_fit_says_its_ranks_share_the_machines_memory(
    tmp_path: Path,
) -> None:
    result = run_cli(["plan", "--world", "4096"], cwd=tmp_path)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "fits on no layout at world sizes 4096 of cpu; the smallest world that fits is 1" in (
        message
    )
    assert "this CPU's ranks share its memory" in message


def _custom(model: str) -> list[str]:
    return [
        "recipe=custom",
        f"model._target_=helpers.{model}",
        "data._target_=helpers.ForwardOnlyData",
    ]


BAD_PLANS = {
    "unknown device": (
        ["--device", "Z80"], "--device='Z80' is not a known device; valid choices: cpu, H100 SXM"
    ),
    "world of 0": (["--world", "0,2"], "--world='0,2' must list world sizes of 1 or more"),
    "world not a count": (["--world", "two"], "--world='two' is not a list of counts"),
    "world listed twice": (["--world", "1,2,1"], "--world='1,2,1' lists 1 twice; give each"),
    "option given twice": (
        ["--world", "1", "--world=2"], "--world='2' repeats --world (given '1' first); give it"
    ),
    "unknown option": (["--fast"], "plan option='--fast' is unknown"),
    "real allocation": (
        _custom("AllocatingModule"),
        "allocated real memory while built on the meta device: table is on cpu",
    ),
    "meta-hostile model": (_custom("MetaHostileModule"), "cannot be built on the meta device"),
    "no batch to read": (
        [*_custom("TinyRegression"), "data._target_=helpers.EmptyData"],
        "helpers.EmptyData' describes no batch without reading data, and its first training "
        "batch could not be read (it has no batches); give the DataModule an example_batch()",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_bad_plan_input_exits_2_with_one_sentence(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, expected = BAD_PLANS[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_cannot_fit_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", "data.seq_len=100000"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "hardware='auto' (single) is predicted to need" in err
    assert "this machine has free for each of its 1 rank(s)" in err
    assert "add force=true to run anyway." in err
    assert list(tmp_path.iterdir()) == [], "no run directory"
    forced = ["train", "logger=none", "data.seq_len=100000", "force=true", "--cfg", "job"]
    assert main(forced) == 0, "force=true skips the check"
    assert "seq_len: 100000" in capsys.readouterr().out


def test_a_run_whose_data_describes_no_batch_says_its_memory_was_not_checked(
    tmp_path: Path,
) -> None:
    # reading a batch before launch would run the DataModule's setup a second time
    args = ["train", *_custom("TinyRegression"), "trainer.max_steps=2", "logger=none"]
    result = run_cli([*args, "callbacks=minimal"], cwd=tmp_path, env=TEST_IMPORTS)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.splitlines()[0] == (
        "lightning-accel: memory not checked before launch: data._target_=helpers."
        "ForwardOnlyData describes no batch without reading data (give the DataModule an "
        "example_batch() method returning meta tensors, or set example_input_array on the "
        "LightningModule)"
    )
    described = run_cli(
        [*args, "model._target_=helpers.ExampleInputRegression", "callbacks=minimal"],
        cwd=tmp_path,
        env=TEST_IMPORTS,
    )
    assert described.returncode == 0, described.stderr[-2000:]
    assert "memory not checked" not in described.stderr


def test_a_refusal_names_the_settings_that_would_fit() -> None:
    footprint = _footprint(3, 96, 96, 8, ("32-true",))
    needed = rank_memory(footprint, SINGLE)
    checkpointed = rank_memory(footprint, replace(SINGLE, checkpoint_every=1))
    limit = (needed.device_bytes + checkpointed.device_bytes) // 2
    with pytest.raises(ConfigError) as refused:
        check_fits(footprint, SINGLE, limit, "here", 8, "cpu")
    message = str(refused.value)
    assert message.startswith("hardware='cpu' (single) is predicted to need")
    assert "optimization.activation_checkpointing.enabled=true or data.batch_size=" in message
    fitting_batch = int(message.split("data.batch_size=")[1].split()[0])
    assert 0 < fitting_batch < 8
    assert check_fits(footprint, replace(SINGLE, checkpoint_every=1), limit, "here", 8, "cpu") == (
        checkpointed
    )
