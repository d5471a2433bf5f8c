"""Entry point of the ``lightning-accel`` command: dispatches to its verbs."""

from __future__ import annotations

import sys

from lightning_accel.cli.console import fail

USAGE = """usage: lightning-accel VERB [ARGS]
       lightning-accel help VERB                     # the verb's options (VERB --help)
       lightning-accel --version
       eval "$(lightning-accel --completion bash)"   # or zsh: completes verbs, groups and keys

verbs:
  train [OVERRIDES]          train with Hydra-composed hardware=, optimization= and recipe=
                             choices (lightning-accel train --help lists every option)
  validate|test|predict ckpt_path=CKPT [OVERRIDES]
                             evaluate a checkpoint: metrics as a table and <stage>.json, or
                             predictions as predictions-rank<N>.pt, in the run directory
  bench [OPTIONS] OVERRIDES  train each cell of a matrix (e.g. hardware=cpu,ddp_cpu
                             optimization=default,fast) in its own process and compare
                             their speed: table, results.csv/json, chart.png
  plan [--world N,M] [--device NAME] [--json] [OVERRIDES]
                             before anything runs: memory per rank, FLOPs, communication
                             and predicted speed of the run's model per layout and world
                             size, ranked among those that fit
  consolidate SHARDED OUT    write a sharded (FSDP2, XLA SPMD) checkpoint directory as one file
                             that loads without a process group and resumes on one device
  doctor [--json] [hardware=NAMES]
                             what this machine has, which hardware profiles run here, what
                             auto picks, and the command that fixes each problem found
  doctor --trace RUN_DIR     what the ranks of a failed distributed run were doing: the
                             collective, step and hook of each, and who did not arrive
  verify [--dry-run] [--out DIR]
                             run and record every CUDA path of the pack on this machine's
                             GPUs (--dry-run: their CPU twins): <device>.json and .md
"""

CONSOLIDATE_USAGE = """usage: lightning-accel consolidate SHARDED OUT

Write a sharded checkpoint directory (FSDP2's or XLA SPMD's, e.g. RUN/checkpoints/last.ckpt
of an fsdp2 run) as one file OUT that loads without a process group, resumes on one device
(ckpt_path=OUT) and evaluates with validate, test and predict.
"""

VERBS = ("train", "validate", "test", "predict", "bench", "plan", "consolidate", "doctor", "verify")


def consolidate(args: list[str]) -> int:
    """``lightning-accel consolidate SHARDED OUT``."""
    import time

    from lightning_accel.checkpoints import consolidate_checkpoint
    from lightning_accel.cli.console import say, working
    from lightning_accel.errors import ConfigError
    from lightning_accel.files import check_writable, required_path

    if any(arg in ("-h", "--help") for arg in args):
        print(CONSOLIDATE_USAGE, end="")
        return 0
    if len(args) != 2:
        fail("consolidate takes two arguments: a sharded checkpoint directory and an output file.")
    try:
        source = required_path("SHARDED", args[0], "a path")
        output = required_path("OUT", args[1], "a path")
    except ConfigError as error:
        fail(error)
    if output.is_dir():
        fail(ConfigError("OUT", str(output), "is a directory; give a file name such as model.ckpt"))
    try:
        check_writable(output, "OUT", is_file=True)
        shards = sum(p.stat().st_size for p in source.glob("*.distcp")) / 2**20
        started = time.monotonic()
        with working(f"consolidating {source} ({shards:.1f} MiB of shards) into {output}"):
            consolidate_checkpoint(source, output)
    except ConfigError as error:
        fail(error)
    seconds = time.monotonic() - started
    say(
        f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) from {source} in "
        f"{seconds:.1f} s ({shards / max(seconds, 1e-3):.1f} MiB/s of shards)"
    )
    return 0


def complete(args: list[str]) -> int:
    """``--completion SHELL`` (the script that installs completion) and ``--complete LINE``
    (the candidates for the command line typed so far, one per line)."""
    from lightning_accel.cli.completion import candidates, completion_script
    from lightning_accel.errors import ConfigError

    if len(args) != 2:
        fail(
            f"{args[0]} takes one argument: "
            + ("bash or zsh" if args[0] == "--completion" else "the command line")
        )
    try:
        if args[0] == "--completion":
            print(completion_script(args[1]), end="")
        else:
            print("\n".join(candidates(args[1])))
    except ConfigError as error:
        fail(error)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["help"] and len(args) > 1:  # help VERB: the verb's own help
        args = [args[1], "--help"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"lightning-accel {version('lightning-accel')}")
        return 0
    if args[0] in ("--completion", "--complete"):
        return complete(args)
    from lightning_accel.errors import StorageFull

    try:
        return run_verb(args[0], args[1:])
    except StorageFull as error:  # a cache, checkpoint or result the disk could not hold
        fail(error)


def run_verb(verb: str, rest: list[str]) -> int:
    """Run the command ``verb`` with its arguments ``rest``; returns the exit code."""
    if verb in ("train", "validate", "test", "predict"):
        from lightning_accel.cli.train import main as train

        return train(rest, "fit" if verb == "train" else verb)
    if verb == "bench":
        from lightning_accel.cli.bench import main as bench

        return bench(rest)
    if verb == "plan":
        from lightning_accel.cli.plan import main as plan

        return plan(rest)
    if verb == "consolidate":
        return consolidate(rest)
    if verb == "doctor":
        from lightning_accel.cli.doctor import main as doctor

        return doctor(rest)
    if verb == "verify":
        from lightning_accel.cli.verify import main as verify

        return verify(rest)
    fail(f"'{verb}' is not a lightning-accel command; valid choices: {', '.join(VERBS)}.")
