"""`rnnscope train`: train a recurrent model on a task with the chosen remedies."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from rnnscope.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from rnnscope.files import WriteError, json_safe
from rnnscope.training.config import SECTIONS, SHORTHANDS, ExperimentConfig

EXAMPLES = """\
examples:
  # the classic: an LSTM with chrono init on the adding problem, clipped by global norm
  rnnscope train --task adding --seq-len 200 --cell lstm --init chrono:200 \\
      --clip norm:1.0 --steps 3000 --out runs/lstm-chrono

  # a relu RNN that explodes; the guard rolls back and halves the learning rate
  rnnscope train --cell rnn_relu --init spectral:3.0 --lr 0.1 --guard rollback

  # any config field as --section.key=value; a YAML file as the base
  rnnscope train --config adding.yaml --bptt.window=50 --probe.every=10 --run.name=tbptt
  rnnscope train --task series --task.path=co2.csv --task.columns=co2 --seq-len 100

  # torch's fused kernels, gradient flow recorded every 20 steps
  rnnscope train --engine native --probe.every=20

  # continue a killed run from its last checkpoint (same final weights)
  rnnscope train --resume --out runs/lstm-chrono

  # data parallel on 2 processes (gloo on CPU, nccl on GPU); --batch is the global batch
  torchrun --nproc_per_node 2 -m rnnscope train --batch 64 --out runs/ddp

Writes config.yaml, metrics.jsonl, summary.json, TensorBoard events and checkpoints/
under --out (default runs/<task>-<cell>-<init>): a new or empty directory, never one
of other files. --resume keeps every good metrics line; damaged ones move to
metrics.damaged, with a note. Limits: model.hidden x model.layers at most 100 million
recurrent weights, run.seed 0..4294967295, run.name 100 characters, run.batch 2**20.
Exit codes: 0 done, 1 training failed (the NaN guard gave up), 2 bad input (one line
naming the field), 130 interrupted (resume with --resume).
"""

# Help for the shorthand flags; which field each sets is training.config.SHORTHANDS.
HELP = {
    "task": "task name", "seq_len": "sequence length", "cell": "rnn_tanh, rnn_relu, lstm or gru",
    "hidden": "hidden units", "layers": "stacked layers", "engine": "unrolled or native",
    "init": "scheme[:argument], e.g. orthogonal, chrono:200",
    "clip": "none, norm:1.0, value:0.5, param_norm:1.0, autoclip:10, agc:0.01",
    "guard": "raise, skip or rollback", "batch": "batch size", "lr": "learning rate",
    "steps": "optimiser steps", "seed": "seed of weights and data", "out": "run directory",
    "window": "truncated BPTT window in steps (none: full BPTT)",
}
TYPES = {"seq_len": int, "hidden": int, "layers": int, "batch": int, "steps": int,
         "seed": int, "lr": float}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a recurrent model on a task, watching the gradient flow",
        description="Train on a task with the chosen cell, init, optimiser, clipping, "
        "truncated BPTT and NaN guard; record the gradient flow through time on a schedule "
        "and keep everything needed to trust and reproduce the run.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a YAML file of config sections")
    for flag, key in SHORTHANDS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=TYPES.get(flag, str),
                            help=f"{HELP[flag]} ({key})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.set_defaults(func=run, overrides=tuple(SECTIONS))


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults < --config file < --section.key=value < shorthand flags, applied together
    so that `--task series --task.path=x.csv` checks path against the new task."""
    config = ExperimentConfig.from_yaml(args.config) if args.config else ExperimentConfig()
    settings = {section: dict(values) for section, values in args.overrides.items() if values}
    clip_spec = None
    for flag, key in SHORTHANDS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if key == "clip":  # --clip norm:1.0: the section from its spec, dotted keys on top
            clip_spec = value
        else:
            section, _, field = key.partition(".")
            settings.setdefault(section, {})[field] = value
    if args.quiet:
        settings.setdefault("run", {})["quiet"] = True
    if clip_spec is not None:
        config = config.with_overrides({"clip": clip_spec})
    return config.with_overrides(settings)


def run(args: argparse.Namespace) -> int:
    from rnnscope.training.distributed import RankFailed, rank_from_env
    from rnnscope.training.run import train  # imports tensorboard: after parsing

    if args.resume:
        given = [f"--{flag.replace('_', '-')}" for flag in SHORTHANDS
                 if flag != "out" and getattr(args, flag) is not None]
        given += [f"--{section}.{key}" for section, values in args.overrides.items()
                  for key in values]
        given += ["--config"] if args.config else []
        if given:
            raise ValueError(f"resume: the run's saved config.yaml decides; drop "
                             f"{', '.join(given)}")
        if args.out is None:
            raise ValueError("resume: name the run directory with --out")
        config = ExperimentConfig().with_overrides({"run": {"out": args.out}})
    else:
        config = build_config(args)
    main = rank_from_env() == 0  # under torchrun rank 0 speaks for all ranks
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # torchrun passes Ctrl-C on to its workers as SIGTERM (each worker has a session
        # of its own): take it as the interrupt it is, so the run is left resumable.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = train(config, resume=args.resume)
    except KeyboardInterrupt:
        if main:
            print(f"rnnscope: interrupted; continue with: rnnscope train --resume --out "
                  f"{config.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WriteError as error:  # disk full mid-run: what was written up to the checkpoint
        if main:                 # stands, so the run can go on from there
            print(f"rnnscope: error: {error}; once there is room, continue with: rnnscope "
                  f"train --resume --out {config.run_dir}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RankFailed:
        return EXIT_BAD_INPUT  # the rank that failed has said why
    failed = result.status == "diverged"
    if main and args.json:
        print(json.dumps(json_safe(result.to_dict()), indent=2, allow_nan=False))
    elif main:
        _print_summary(result)
    if main:
        for note in result.notes:
            print(f"rnnscope: note: {note}", file=sys.stderr)
    if main and failed:
        print(f"rnnscope: training failed: {result.message}", file=sys.stderr)
    if not main:
        # Every rank agreed on the outcome; rank 0 still writes the summary, and torchrun
        # stops all workers as soon as one exits non-zero, so rank 0's code speaks.
        return EXIT_OK
    return EXIT_FAILED if failed else EXIT_OK


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _print_summary(result) -> None:
    solved = "solved" if result.solved else "not solved"
    print(f"{result.run_dir.name}: {result.status} after {result.steps} steps in "
          f"{result.seconds:.1f} s")
    against = ", ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in
                        result.baselines.items()) or f"chance {result.baseline:.4g}"
    print(f"  {result.metric_name} {result.metric:.4g} on held-out data ({against}): "
          f"{solved}; last training loss {result.final_loss:.4g}")
    if result.diagnosis is not None:
        d = result.diagnosis
        print(f"  gradient flow: {d.verdict}, reach {d.reach}/{d.steps} steps, "
              f"x{d.rate:.3g} per step")
        for rank, fix in enumerate(d.fixes[:2], 1):
            print(f"  fix {rank}: {fix.remedy}: {fix.cli}")
    print(f"  clipped {result.clip_rate:.0%} of steps, {result.rollbacks} rollbacks, "
          f"{result.skipped} skipped steps")
    print(f"  run directory: {result.run_dir} (tensorboard --logdir {result.run_dir.parent})")


__all__ = ["EXIT_BAD_INPUT", "build_config", "register", "run"]
