"""Lightning's CSVLogger for a run that resumes in its own directory, and its W&B logger
without a deprecated setting."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from lightning_accel.files import replaced_whole


class RunCSVLogger(CSVLogger):
    """:class:`CSVLogger` (same arguments) whose ``metrics.csv`` holds the whole history of
    a run that resumed in its own directory.

    Lightning's deletes the ``metrics.csv`` an earlier attempt wrote as soon as it logs to
    the same directory, so a run resumed from its last checkpoint (a raised ``max_steps``,
    a restart after SIGTERM) kept only the steps after it. This one keeps the earlier rows
    and logs on below them, under their header widened by any new metric. Add the
    :class:`~lightning_accel.callbacks.ExactResume` callback (the runner does), which calls
    :meth:`continue_from` with the step ``fit`` starts at: an attempt killed after its last
    checkpoint logged steps the resumed run trains and logs again, and a fresh start owes
    nothing to an earlier attempt.
    """

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        # private Lightning API (pinned by tests/test_upstream_pins.py): the writer is built
        # as CSVLogger builds it, with the file system and cache CSVLogger keeps
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def continue_from(self, step: int) -> None:
        """Drop the rows of ``metrics.csv`` logged at ``step`` or later. Lightning logs a
        batch's metrics, and validation after it, at the batch's index, the steps taken
        before it: rows up to ``step - 1`` describe what the checkpoint at ``step`` holds."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if (found := _read_metrics(path)) is None:
            return
        header, rows = found
        kept = [row for row in rows if (logged := _logged_step(row)) is not None and logged < step]
        if len(kept) == len(rows):
            return
        with replaced_whole(path) as staging, staging.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)


def _read_metrics(path: Path) -> tuple[list[str], list[dict[str, str | None]]] | None:
    """The header and rows of the ``metrics.csv`` at ``path``; None where there is none, or
    where it is no CSV text (a byte that is not UTF-8, a NUL): that file is renamed to the
    first free ``metrics.csv.damaged``, ``.damaged-2``, ... beside it, with a warning, and
    the run's metrics go to a new one."""
    if not path.is_file():
        return None
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        aside, number = path.with_name(f"{path.name}.damaged"), 1
        while aside.exists():
            number += 1
            aside = path.with_name(f"{path.name}.damaged-{number}")
        path.rename(aside)
        rank_zero_warn(
            f"{path} is not a CSV file of metrics ({error}); it is kept as {aside}, and the "
            "run's metrics go to a new one"
        )
        return None


def _logged_step(row: dict[str, str | None]) -> int | None:
    """A row's step; None for a row without a whole one: a line a kill cut short has fewer
    fields than the header (``csv`` fills them with None) or a step cut mid-number."""
    if None in row.values():
        return None
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer of ``metrics.csv`` and ``hparams.yaml``, appending to the metrics
    file it finds rather than deleting it."""

    @override
    def _check_log_dir_exists(self) -> None:
        # private Lightning API (pinned by tests/test_upstream_pins.py): called by the
        # writer's __init__, where Lightning deletes the file; here its header is taken up
        if (found := _read_metrics(Path(self.metrics_file_path))) is not None:
            self.metrics_keys = found[0]


class RunWandbLogger(WandbLogger):
    """:class:`WandbLogger` (same arguments) that hands W&B no ``anonymous`` setting unless
    one is asked for: Lightning passes ``anonymous=None`` to ``wandb.init`` always, and W&B
    0.19 and later warn at every run that the setting has no effect."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # private Lightning API (pinned by tests/test_upstream_pins.py): wandb.init's arguments
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
