"""``validate``, ``test`` and ``predict`` on a checkpoint: the metrics of the run that wrote
it, single-file and sharded, one process and two; predictions as data; bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import SHAPE, TEST_IMPORTS, EvaluatedRegression, Runs, held_out_split, run_cli

from lightning_accel.errors import SIGINT_EXIT_CODE

pytestmark = pytest.mark.slow


def _evaluation(
    runs: Runs, verb: str, name: str, checkpoint: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    args = [verb, *SHAPE, f"data.source={runs.corpus}", "data.batch_size=8", "logger=none"]
    args += ["trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "callbacks=minimal"]
    args += [f"ckpt_path={checkpoint}", f"hydra.run.dir={runs.root / name}", *extra]
    return run_cli(args, cwd=runs.root, timeout=300, env=TEST_IMPORTS)


def _evaluate(runs: Runs, verb: str, name: str, checkpoint: Path, *extra: str) -> Path:
    result = _evaluation(runs, verb, name, checkpoint, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs.root / name


def _validation_at(run_dir: Path, step: int) -> float:
    validations = json.loads((run_dir / "summary.json").read_text())["validation"]
    return next(v["val/loss"] for v in validations if v["step"] == step)


def test_validate_and_test_give_the_checkpoints_own_validation_loss(runs: Runs) -> None:
    single = runs.train("single", "cpu", 1)
    checkpoint = runs.checkpoint(single, step=10)
    expected = _validation_at(single, 10)
    validated = _evaluate(runs, "validate", "validate_single", checkpoint)
    metrics = json.loads((validated / "validate.json").read_text())
    assert metrics["val/loss"] == pytest.approx(expected, abs=1e-6)
    tested = _evaluate(runs, "test", "test_single", checkpoint)
    metrics = json.loads((tested / "test.json").read_text())
    assert metrics["test/loss"] == pytest.approx(expected, abs=1e-6), "the held-out split"
    assert set(metrics) == {"test/loss", "test/bits_per_byte", "test/perplexity"}


def test_a_sharded_checkpoint_evaluates_under_fsdp2_and_in_one_process(runs: Runs) -> None:
    fsdp2 = runs.train("fsdp2", "fsdp2_cpu", 2)
    checkpoint = runs.checkpoint(fsdp2, step=10)
    expected = _validation_at(fsdp2, 10)
    sharded = _evaluate(
        runs, "validate", "validate_fsdp2", checkpoint, "hardware=fsdp2_cpu", "data.batch_size=4"
    )
    assert json.loads((sharded / "validate.json").read_text())["val/loss"] == pytest.approx(
        expected, abs=1e-5
    )
    whole = _evaluate(runs, "validate", "validate_fsdp2_in_one", checkpoint)
    assert json.loads((whole / "validate.json").read_text())["val/loss"] == pytest.approx(
        expected, abs=1e-5
    )


def test_a_whole_checkpoint_evaluates_under_fsdp2(runs: Runs) -> None:
    single = runs.train("single", "cpu", 1)
    checkpoint = runs.checkpoint(single, step=10)
    sharded = _evaluate(
        runs,
        "validate",
        "validate_whole_fsdp2",
        checkpoint,
        "hardware=fsdp2_cpu",
        "data.batch_size=4",
    )
    assert json.loads((sharded / "validate.json").read_text())["val/loss"] == pytest.approx(
        _validation_at(single, 10), abs=1e-5
    )


def test_two_ranks_evaluate_every_held_out_sample_once_as_one_process_does(
    tmp_path: Path,
) -> None:
    # 359 held-out digits: two ranks' shards of 180 and 179; a DistributedSampler's 179 each
    # left one out, and the accuracy differed from one process's
    image = ["recipe=image", "callbacks=minimal", "logger=none", "hardware=cpu"]
    trained = run_cli(
        ["train", *image, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"

    def evaluate(verb: str, hardware: str) -> Path:
        run_dir = tmp_path / f"{verb}_{hardware}"
        args = [verb, *image, checkpoint, f"hardware={hardware}", f"hydra.run.dir={run_dir}"]
        result = run_cli(args, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    one, two = (
        json.loads((evaluate("validate", h) / "validate.json").read_text())
        for h in ("cpu", "ddp_cpu")
    )
    assert two["val/accuracy"] == one["val/accuracy"]
    assert two["val/loss"] == pytest.approx(one["val/loss"], abs=1e-6)

    def predicted(run_dir: Path, rank: int) -> torch.Tensor:
        batches = torch.load(run_dir / f"predictions-rank{rank}.pt", weights_only=True)
        return torch.cat([batch["probabilities"] for batch in batches])

    in_one = predicted(evaluate("predict", "cpu"), 0)
    assert in_one.shape == (359, 10)
    on_two = evaluate("predict", "ddp_cpu")
    # sample i is the (i // 2)-th prediction of rank i % 2
    torch.testing.assert_close(predicted(on_two, 0), in_one[0::2])
    torch.testing.assert_close(predicted(on_two, 1), in_one[1::2])


def test_a_users_own_held_out_loaders_are_read_once_in_equal_batches_on_two_ranks(
    tmp_path: Path,
) -> None:
    # plain DataLoaders, which Lightning gives its distributed samplers: in validation they
    # repeated a sample (38 read of 37), in predict one rank had a batch more (17 and 16
    # samples in batches of 4), which FSDP2 waited on until its collective timed out
    user = ["recipe=custom", "callbacks=minimal", "logger=none"]
    user += ["model._target_=helpers.EvaluatedRegression", "data._target_=helpers.HeldOutSplitData"]
    args = ["train", *user, "hardware=cpu", "trainer.max_steps=2"]
    trained = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=TEST_IMPORTS)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model = EvaluatedRegression()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])

    def evaluate(verb: str, hardware: str, samples: int) -> Path:
        run_dir = tmp_path / verb
        args = [verb, *user, f"hardware={hardware}", f"+data.samples={samples}"]
        args += [f"ckpt_path={checkpoint}", f"hydra.run.dir={run_dir}"]
        args += ["hardware.strategy_options.timeout_s=30"]
        result = run_cli(args, cwd=tmp_path, timeout=300, env=TEST_IMPORTS)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "DistributedSampler" not in result.stderr, "Lightning's warning, untrue here"
        return run_dir

    inputs, targets = held_out_split(37)
    with torch.no_grad():
        expected = float((model(inputs) - targets).square().sum())
    validated = json.loads((evaluate("validate", "ddp_cpu", 37) / "validate.json").read_text())
    assert validated["val/samples"] == 37
    assert validated["val/sum_squared_error"] == pytest.approx(expected, rel=1e-5)

    # 33 samples: the first rank's 17th would be a batch of its own, so it is left out
    inputs, _ = held_out_split(33)
    with torch.no_grad():
        expected_predictions = model(inputs[:32]).squeeze(1)
    predicted = evaluate("predict", "fsdp2_cpu", 33)
    for rank in (0, 1):
        batches = torch.load(predicted / f"predictions-rank{rank}.pt", weights_only=True)
        assert len(batches) == 4
        predictions = torch.cat([batch["prediction"] for batch in batches])
        torch.testing.assert_close(predictions, expected_predictions[rank::2])


def test_fsdp2_validates_and_saves_the_batch_norm_statistics_ddp_has(tmp_path: Path) -> None:
    # FSDP2 leaves buffers alone: each rank's running statistics followed its own batches, so
    # the ranks validated different models (val/loss 2.25293 against DDP's 2.25288) and the
    # checkpoint held other statistics (validated: 2.25335) than either
    image = ["recipe=image", "callbacks=minimal", "logger=none", "trainer.max_steps=11"]

    def validation(verb: str, hardware: str, *extra: str) -> dict[str, float]:
        run_dir = tmp_path / f"{verb}_{hardware}"
        args = [verb, *image, f"hardware={hardware}", f"hydra.run.dir={run_dir}", *extra]
        result = run_cli(args, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        if verb == "validate":
            return json.loads((run_dir / "validate.json").read_text())
        return json.loads((run_dir / "summary.json").read_text())["validation"][-1]

    fsdp2 = validation("train", "fsdp2_cpu")
    ddp = validation("train", "ddp_cpu")
    assert fsdp2["val/loss"] == pytest.approx(ddp["val/loss"], abs=1e-6)
    assert fsdp2["val/accuracy"] == ddp["val/accuracy"]
    checkpoint = tmp_path / "train_fsdp2_cpu" / "checkpoints" / "last.ckpt"
    validated = validation("validate", "cpu", f"ckpt_path={checkpoint}")
    assert validated["val/loss"] == pytest.approx(fsdp2["val/loss"], abs=1e-6)


def test_predict_writes_each_batchs_next_tokens_and_losses_as_data(runs: Runs) -> None:
    checkpoint = runs.checkpoint(runs.train("single", "cpu", 1), step=10)
    predicted = _evaluate(runs, "predict", "predict_single", checkpoint)
    batches = torch.load(predicted / "predictions-rank0.pt", weights_only=True)
    assert len(batches) > 2 and batches[0]["next_tokens"].shape == (8, 32)
    assert batches[0]["loss"].shape == (8,) and bool((batches[0]["loss"] > 0).all())
    assert int(batches[0]["next_tokens"].max()) < 256


@pytest.mark.parametrize("verb", ["validate", "predict"])
def test_ctrl_c_during_an_evaluation_exits_130_saying_nothing_was_written(
    runs: Runs, verb: str
) -> None:
    checkpoint = runs.checkpoint(runs.train("single", "cpu", 1), step=10)
    interrupt = "+callbacks.interrupt._target_=helpers.CtrlCInEvaluation"
    result = _evaluation(runs, verb, f"{verb}_interrupted", checkpoint, interrupt)
    assert result.returncode == SIGINT_EXIT_CODE, result.stderr[-3000:]
    said = f"lightning-accel: stopped on SIGINT during {verb}, before its results were written"
    assert said in result.stderr and "Traceback" not in result.stderr
    written = {p.name for p in (runs.root / f"{verb}_interrupted").iterdir()}
    assert not written & {"validate.json", "predictions-rank0.pt"}


@pytest.mark.parametrize(
    ("verb", "extra", "fragment"),
    [
        ("test", [], "ckpt_path=None is required by test: give the checkpoint to evaluate"),
        (
            "predict",
            ["model._target_=helpers.TrainOnlyLanguageModel", "ckpt_path=CKPT"],
            "defines no predict_step, which predict runs",
        ),
        (
            "validate",
            ["ckpt_path=CKPT", "trainer.limit_val_batches=0.0"],
            "trainer.limit_val_batches=0.0 leaves validate no batch to run.",
        ),
        (
            "predict",
            ["ckpt_path=CKPT", "trainer.limit_predict_batches=0"],
            "trainer.limit_predict_batches=0 leaves predict no batch to run.",
        ),
    ],
)
def test_evaluation_bad_input_exits_2_before_anything_runs(
    runs: Runs, tmp_path: Path, verb: str, extra: list[str], fragment: str
) -> None:
    checkpoint = runs.checkpoint(runs.train("single", "cpu", 1), step=10)
    args = [verb, *SHAPE, f"data.source={runs.corpus}", "hydra.run.dir=out"]
    args += [e.replace("CKPT", str(checkpoint)) for e in extra]
    result = run_cli(args, cwd=tmp_path, env=TEST_IMPORTS)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
