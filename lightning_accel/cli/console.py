"""What the CLI prints: our messages on a rich console, upstream chatter filtered out."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import MutableMapping
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typing_extensions import override

from lightning_accel.cli.job_log import record
from lightning_accel.errors import ConfigError, RunStopped

console = Console(stderr=True, highlight=False)

# Upstream messages that carry no information for a user of this CLI.
_QUIET_LOGGERS = (
    "lightning.pytorch",
    "lightning.fabric",
    "lightning_fabric",
    "pytorch_lightning",
    # a search's study: the pack prints its trials and the best one
    "alembic",
    "hydra_plugins.hydra_optuna_sweeper",
)
# messages that name no action for a user: clipping gradients over a 2D (FSDP2 x TP) mesh
# reduces the norm over each dimension in turn, which DTensor logs at every step; an MLflow
# experiment created on first use
_HINT_LOGGERS = ("torch.distributed.tensor._redistribute", "lightning.pytorch.loggers.mlflow")
# the trackers' own chatter (the runner says where their runs went)
_TRACKER_QUIET_ENVIRONMENT = {"MLFLOW_LOGGING_LEVEL": "WARNING", "WANDB_SILENT": "true"}
_UPSTREAM_MODULES = (
    r"(torch|torchvision|torchmetrics|torch_xla|lightning|lightning_fabric|pytorch_lightning"
    r"|lightning_utilities|hydra|omegaconf|tensorboardX|google\.protobuf|mlflow|wandb)(\.|$)"
)
_IGNORED_WARNINGS = (
    r".*does not have many workers.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*Detected an existing checkpoint in .* overwriting.*",
    r".*torch.distributed.nn.functional.all_gather is deprecated.*",
    r".*is not supported by the model summary.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*LeafSpec.*",
    r".*TypedStorage is deprecated.*",
    # torch's safe loader on a plain pickle, which the pack then refuses in a sentence
    r".*Detected pickle protocol \d+ in the checkpoint.*",
    # a run that ends before its first validation: Lightning warns only until validation
    # has run, then raises, which the runner reports as the callback's monitor key
    r".*`ModelCheckpoint\(monitor=.*\)` could not find the monitored key.*",
    # resuming without a callback the checkpoint's run had: no use to validate, test or
    # predict, and a choice in training, where the runner names the states left unused
    r".*callbacks used to create the checkpoint need to be provided during `Trainer`.*",
    # resuming inside an epoch with a loader that kept no position: the runner says so
    r".*ended before the epoch ended and your dataloader is not resumable.*",
    # the pack's strategies deal a held-out loader's samples out once each (HeldOutDealing)
    r".*Using `DistributedSampler` with the dataloaders. During `trainer.*",
    # evaluating a checkpoint from another run directory (validate, test, predict)
    r".*The dirpath has changed from .* won't be reloaded.*",
    # an XLA SPMD save or load: one process writes every shard by design
    r".*torch.distributed is disabled, unavailable or uninitialized, assuming the intent is.*",
    # torch_xla's SPMD save planner, on an argument torch added since
    r".*The function definition for SavePlanner.set_up_planner has been updated.*",
    # FSDP2 over a tensor-parallel split returns the pack's blocks' outputs as views of their
    # DTensors' local tensors; its models change no output in place (other models keep it)
    r".*FSDP2-wrapped module \(FSDP(TransformerBlock|GPTLanguageModel)\) returned a view tensor",
)


def quiet_checkpointed_block_views() -> None:
    """Filter FSDP2's view-output warning for activation-checkpointed blocks too. The
    wrapper's name (``FSDPCheckpointWrapper``) hides which block it wraps, so call this
    only for a model whose blocks are the pack's, which change no output in place."""
    warnings.filterwarnings(
        "ignore", message=r".*FSDP2-wrapped module \(FSDPCheckpointWrapper\) returned a view tensor"
    )


# XLA's C++ layer (torch_xla, where the user has not chosen a level): its warnings, such as
# one per compiled SPMD graph that GSPMD is to be replaced, name no action for a user
XLA_CPP_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
XLA_CPP_ERRORS_ONLY = "2"
# torch_xla's own code, on a torch indexing form deprecated after torch_xla 2.9 was written
_IGNORED_TORCH_XLA_WARNINGS = (r".*Using a non-tuple sequence for multidimensional indexing.*",)


class _TorchXLAInfo(logging.Filter):
    """Drops the informational records torch_xla logs on the root logger, which Hydra's job
    logging prints: "Joining rendezvous 'reduce'..." at every barrier of a multi-process
    XLA run, dozens a step. Its warnings and errors pass."""

    _PACKAGE = f"{os.sep}torch_xla{os.sep}"

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or self._PACKAGE not in record.pathname


_TORCH_XLA_INFO = _TorchXLAInfo()

# Set for this process only when the user has not chosen a level: torch's C++ layer prints
# every retry of a rendezvous connection with a stack trace. Ranks keep torch's default.
CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"
_CPP_LOG_LEVEL_OWN = "LIGHTNING_ACCEL_QUIET_CPP"


def quiet_cpp_log(environment: MutableMapping[str, str]) -> None:
    """Set torch's C++ log level to FATAL in ``environment`` unless the user chose one
    (torch reads it when it loads); :func:`rank_environment` undoes it for ranks."""
    if CPP_LOG_LEVEL not in environment:
        environment[CPP_LOG_LEVEL] = "FATAL"
        environment[_CPP_LOG_LEVEL_OWN] = "1"


def quiet_upstream() -> None:
    """Silence Lightning's tips and banners, known harmless warnings (by message), the
    deprecation warnings raised inside upstream libraries (by module: a user's own code
    keeps its warnings) and (in a process that has not imported torch yet) torch's C++ log
    messages below FATAL, (before torch_xla loads) XLA's below ERROR, and torch_xla's
    informational records on the root logger."""
    if "torch" not in sys.modules:
        quiet_cpp_log(os.environ)
    if "torch_xla" not in sys.modules:
        os.environ.setdefault(XLA_CPP_LOG_LEVEL, XLA_CPP_ERRORS_ONLY)
    for name, value in _TRACKER_QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _HINT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().addFilter(_TORCH_XLA_INFO)  # once: the same filter is not added twice
    # deprecations inside the libraries we drive, not the user's own code's
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_UPSTREAM_MODULES)
    for pattern in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for pattern in _IGNORED_TORCH_XLA_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, module=r"torch_xla\.")


# a log's tables stay readable but bounded: rows of free text fold beyond this
_LOG_TABLE_WIDTH = 200


def print_table(table: Table, target: Console = console) -> None:
    """Print a table of figures on ``target``: at a terminal's width there, and elsewhere (a
    log, a pipe), where rich assumes 80 columns and cuts cells short ("32…"), as wide as
    its rows are (up to 200 columns). Tables of sentences print as they are, wrapped."""
    if not target.is_terminal:
        bounded = target.options.update_width(_LOG_TABLE_WIDTH)
        width = target.measure(table, options=bounded).maximum
        if width > target.width:
            target = Console(file=target.file, width=width, highlight=False)
    target.print(table)


def working(message: str) -> Any:
    """A spinner with ``message`` and the time elapsed, on a terminal while a step runs
    (nothing in logs or pipes): ``with working("checking ..."):``."""
    if not console.is_terminal:  # rich would still end its display with an empty line
        return contextlib.nullcontext()
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"[bold cyan]lightning-accel[/]: {escape(message)}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    progress.add_task(message, total=None)
    return progress


def say(message: str) -> None:
    """A progress message for people (stderr, so stdout stays for machine-readable output);
    printed by rank 0 only."""
    from lightning_accel.cli.cluster import process_rank

    if process_rank() != 0:
        return
    console.print(f"[bold cyan]lightning-accel[/]: {escape(message)}", soft_wrap=True)
    record(logging.INFO, message)


def fail(error: ConfigError | Exception | str, exit_code: int | None = None) -> NoReturn:
    """Report an error in one sentence and exit: with ``exit_code``, else the error's own
    (``StorageFull``: 1), else 2 (the user's input was wrong)."""
    console.print(f"[bold red]lightning-accel: error:[/] {escape(str(error))}", soft_wrap=True)
    record(logging.ERROR, str(error))
    sys.exit(exit_code if exit_code is not None else getattr(error, "exit_code", 2))


def end_stopped(stopped: RunStopped) -> NoReturn:
    """Say where a run stopped on a signal and how it resumes (rank 0), then exit with its
    code (143 for SIGTERM): a stopped run is neither finished nor failed."""
    say(str(stopped))
    sys.exit(stopped.exit_code)


def rank_environment() -> dict[str, str | None]:
    """Variables to change for the ranks this process starts (``None``: remove): torch's C++
    log level goes back to its default when the CLI silenced it for itself."""
    if os.environ.get(_CPP_LOG_LEVEL_OWN):
        return {CPP_LOG_LEVEL: None, _CPP_LOG_LEVEL_OWN: None}
    return {}
