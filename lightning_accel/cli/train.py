"""``lightning-accel train``: compose with Hydra, check every job up front, then fit."""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import Container, DictConfig, OmegaConf

from lightning_accel.cli.compose import compose_job, config_dir_override, job_overrides
from lightning_accel.cli.console import end_stopped, fail, quiet_upstream, say, working
from lightning_accel.cli.hydra_private import command_line_parser
from lightning_accel.cli.preflight import (
    SUBMITIT_LAUNCHERS,
    preflight,
    prepare_data,
    validated_run,
)
from lightning_accel.cli.schema import RunConfig, register_schemas
from lightning_accel.errors import SIGINT_EXIT_CODE, ConfigError, RunStopped, StorageFull
from lightning_accel.profiles import config_dir


def run_job(cfg: DictConfig) -> float | None:
    """Hydra's task function: one job, in its own run directory.

    Started by hand (or by ``launcher=torchrun``), it resolves the job's config once, writes
    it into the run directory and fits in this process or starts this node's ranks, which
    read that file. Started as one rank of a world that an outside launcher created (a
    SLURM or submitit task, a torchrun worker), it fits as that rank. Returns the fit's
    objective (what a sweeper such as Optuna's optimizes), None for the other stages. What
    the console says meanwhile, its ranks' too, also goes to the job's log file.
    """
    from lightning_accel.cli.job_log import job_log

    with job_log():
        return _run_job(cfg)


def _run_job(cfg: DictConfig) -> float | None:
    from lightning_accel.cli.choices import measure_choices
    from lightning_accel.cli.cluster import check_world_size, external_world
    from lightning_accel.cli.launch import RanksFailed, launch_ranks, launches_ranks
    from lightning_accel.cli.process_state import allocator_note, start_job_as_its_own_process
    from lightning_accel.cli.rank import leave_process_group
    from lightning_accel.cli.run_lock import run_directory_lock
    from lightning_accel.cli.runner import (
        already_trained,
        run_stage,
        save_resolved_config,
        whole_checkpoint_for,
    )
    from lightning_accel.cli.search import required_objective, searching
    from lightning_accel.cli.trial_check import with_trial_check
    from lightning_accel.optimize.memory_format import NO_CONVOLUTIONS
    from lightning_accel.plan.run import plan_run

    quiet_upstream()
    try:
        run = validated_run(cfg, Path(HydraConfig.get().runtime.output_dir))
        if run.stage == "fit" and searching(HydraConfig.get()):
            run = with_trial_check(run)
        world = external_world()
        # the command that launches the run holds its directory; ranks and nodes share it
        holds_directory = world is None and run.launcher.nnodes == 1
        with run_directory_lock(Path(run.run_dir)) if holds_directory else nullcontext():
            if done := already_trained(run):  # a repeated or requeued run: its files are kept
                say(done)
            elif world is not None:
                processes = plan_run(run.hardware, run.optimization).processes
                check_world_size(run.launcher.nnodes, processes, world)
                if world.rank == 0:
                    save_resolved_config(run)
                run_stage(run)
                leave_process_group()
            else:
                start_job_as_its_own_process()
                if note := allocator_note(run.optimization.keep_freed_host_memory):
                    say(note)
                if run.optimization.channels_last_reason not in (None, NO_CONVOLUTIONS):
                    on = "on" if run.optimization.channels_last else "off"
                    say(f"channels-last {on}: {run.optimization.channels_last_reason}")
                if run.launcher.nnodes == 1 and run.stage == "fit":  # nodes could disagree
                    run = measure_choices(run)
                plan = plan_run(run.hardware, run.optimization)
                run = whole_checkpoint_for(run, plan.strategy)
                config_path = save_resolved_config(run)
                if launches_ranks(run):
                    launch_ranks(config_path, plan.processes, run.launcher)
                elif run.launcher.name == "ray":
                    from lightning_accel.cli.ray_launch import launch_on_ray

                    launch_on_ray(config_path, plan, run.launcher)
                else:
                    run_stage(run)
    except (ConfigError, StorageFull, RanksFailed) as error:
        fail(error)
    except RunStopped as stopped:
        end_stopped(stopped)
    except KeyboardInterrupt:
        # Ctrl+C while the job was checked or its choices timed; a stage that began says
        # where it stopped itself
        directory = HydraConfig.get().runtime.output_dir
        stopped = "stopped on SIGINT before the run began: nothing trained or saved"
        end_stopped(
            RunStopped(
                f"{stopped}; {directory} holds Hydra's record of the job only", SIGINT_EXIT_CODE
            )
        )
    outputs = sorted(p.name for p in Path(run.run_dir).iterdir() if not p.name.startswith("."))
    say(f"done; results in {run.run_dir}: {', '.join(outputs)}")
    if run.stage != "fit" or (world is not None and world.rank != 0):
        return None
    try:
        return required_objective(Path(run.run_dir), run.objective, searching(HydraConfig.get()))
    except ConfigError as error:
        fail(error)


class EarlyRankServer:
    """Starts the rank server as soon as a job that launches ranks has a valid schema, so
    that its imports overlap with this process's checks, which import Lightning too, and
    stops it again when the command is refused. A job whose hardware this machine cannot
    run starts nothing; the checks report it in their order."""

    def __init__(self) -> None:
        self.started = False

    def __call__(self, run: RunConfig) -> None:
        from lightning_accel.cli.launch import launches_ranks
        from lightning_accel.cli.rank_server import start_rank_server

        try:
            if launches_ranks(run):
                # False where one was running already (forked with the command): left as is
                self.started = start_rank_server() or self.started
        except ConfigError:
            pass

    def stop(self) -> None:
        """Kill the server if this command started it (nothing imported otherwise)."""
        if self.started:
            from lightning_accel.cli.rank_server import stop_rank_server

            stop_rank_server()
            self.started = False


def check_package(cfg: DictConfig, shown: str, package: str) -> None:
    """Refuse a ``--package`` that names nothing in the config ``--cfg shown`` prints (the
    job's, Hydra's section, or all), read unresolved: Hydra said so after composing, in its
    own words, with exit 1."""
    sections = {"job": [k for k in cfg if k != "hydra"], "hydra": ["hydra"]}.get(shown, list(cfg))
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    parts = package.split(".")
    if parts[0] in sections:
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                break
        else:
            return
    raise ConfigError(
        "--package",
        package,
        f"names nothing in the config --cfg {shown} prints; give a dotted key under one of "
        "its sections",
        sorted(sections),
    )


def print_resolved(runs: list[RunConfig], package: str | None = None) -> None:
    """Print each job's config with every interpolation resolved (what ``--cfg job`` shows),
    or only the key ``package`` of it, as Hydra prints one: a section under a
    ``# @package`` line, a value alone."""
    for number, run in enumerate(runs):
        if len(runs) > 1:
            print(f"# job {number}")
        config = OmegaConf.structured(run)
        if package is None:
            print(OmegaConf.to_yaml(config), end="")
            continue
        value = OmegaConf.select(config, package)
        if isinstance(value, Container):
            print(f"# @package {package}\n{OmegaConf.to_yaml(value)}", end="")
        else:
            print("null" if value is None else value)


_PRIMARY_CONFIG = (
    "the pack's primary config is its own conf/config.yaml; add your project's config "
    "groups with --config-dir DIR"
)
# Hydra flags that would make Hydra run another config than the one the runner checked
UNSUPPORTED_HYDRA_FLAGS = {
    "config_path": _PRIMARY_CONFIG,
    "config_name": _PRIMARY_CONFIG,
    "experimental_rerun": "run a job again with the overrides it recorded, as the command "
    "a stopped run prints does (RUN_DIR/.hydra/overrides.yaml)",
}


def refuse_unsupported_flags(options: argparse.Namespace) -> None:
    """Exit 2 for a Hydra flag the runner does not take (:data:`UNSUPPORTED_HYDRA_FLAGS`,
    ``--shell-completion``, ``--resolve`` with Hydra's section), naming what to use
    instead."""
    if options.shell_completion:
        fail(
            "--shell-completion is Hydra's completion of a one-script app; lightning-accel "
            'completes its verbs, groups and keys with: eval "$(lightning-accel --completion '
            'bash)" (or zsh).'
        )
    if options.resolve and options.cfg in ("hydra", "all"):  # Hydra's traceback otherwise
        fail(
            f"train --cfg {options.cfg} --resolve cannot resolve Hydra's section, which refers "
            "to the job's directory and keys, known once the job starts; --cfg job --resolve "
            f"prints the run's config resolved, and --cfg {options.cfg} prints it as written."
        )
    for flag, instead in UNSUPPORTED_HYDRA_FLAGS.items():
        given = getattr(options, flag)
        if given is not None and (flag, given) != ("config_name", "config"):
            fail(f"train --{flag.replace('_', '-')} is not supported: {instead}.")


def parse_command_line(args: list[str], verb: str) -> argparse.Namespace:
    """``args`` read by Hydra's own parser, with its flags allowed between the overrides (as
    the pack's other verbs allow theirs); a mistake is one sentence, not a usage block."""
    parser = command_line_parser()

    def one_sentence(message: str) -> NoReturn:
        fail(f"{verb}: {message}; lightning-accel {verb} --help lists its flags.")

    parser.error = one_sentence  # type: ignore[method-assign]  # argparse's hook for mistakes
    return parser.parse_intermixed_args(args)


def hydra_command_line(options: argparse.Namespace) -> list[str]:
    """The flags ``options`` hold, then the overrides: the order ``hydra.main`` reads (its
    parser takes the overrides only as one run, before or after every flag)."""
    defaults = command_line_parser().parse_args([])
    flags = []
    for name, value in vars(options).items():
        if name == "overrides" or value == getattr(defaults, name):
            continue
        flags.append(f"--{name.replace('_', '-')}")
        if value is not True:
            flags.append(str(value))
    return [*flags, *options.overrides]


def main(args: list[str], stage: str = "fit") -> int:
    """Run ``lightning-accel train`` (``stage`` fit) or ``validate``, ``test``, ``predict``
    with the arguments after the verb."""
    quiet_upstream()
    register_schemas()
    if "--version" in args:  # Hydra's parser would print its own version only
        print(f"lightning-accel {version('lightning-accel')} (Hydra {hydra.__version__})")
        return 0
    options = parse_command_line(args, "train" if stage == "fit" else stage)
    if stage != "fit":
        options.overrides.insert(0, f"stage={stage}")
    refuse_unsupported_flags(options)
    informational = options.help or options.hydra_help or options.info
    overrides = list(options.overrides)
    try:
        if options.config_dir is not None:
            overrides.append(config_dir_override(options.config_dir))
        if informational:  # Hydra composes the overrides for these too, failing in a traceback
            compose_job(job_overrides(overrides, options.multirun)[0])
    except ConfigError as error:
        fail(error)
    # --package KEY: one key of what --cfg prints; _global_ is Hydra's name for all of it
    package = None if options.package in (None, "_global_") else options.package
    if not informational:
        rank_server = EarlyRankServer()
        try:
            with working("checking the command: config, model, data, memory"):
                runs = preflight(overrides, options.multirun, None if options.cfg else rank_server)
            if not options.multirun and runs[0].launcher.name in SUBMITIT_LAUNCHERS:
                # Hydra hands jobs to a launcher plugin only in a sweep: one job is a sweep of one
                options.multirun = True
                runs = preflight(overrides, multirun=True)
            if not options.cfg:
                prepare_data(runs)
            elif package is not None:
                first_job = compose_job(job_overrides(overrides, options.multirun)[0])
                check_package(first_job, options.cfg, package)
        except (ConfigError, StorageFull) as error:
            rank_server.stop()
            fail(error)
        # Hydra's own printing of a job's key fails on its interpolations (run_dir) and
        # calls a null value not found: the job's keys are printed resolved, here
        if options.cfg == "job" or (package and package.split(".")[0] != "hydra"):
            print_resolved(runs, package)
            return 0
    sys.argv = ["lightning-accel train", *hydra_command_line(options)]
    hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(run_job)()
    return 0
