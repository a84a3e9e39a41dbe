"""`rnnscope diagnose`: record one batch's gradient flow, give the verdict and the fixes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rnnscope.checks import integer
from rnnscope.cli.common import EXIT_OK
from rnnscope.figures.flow import plot_flow_profile
from rnnscope.files import (
    blocking_file,
    check_file_target,
    json_safe,
    read_yaml,
    reason,
    write_json,
)
from rnnscope.flow.diagnosis import Context, diagnose
from rnnscope.flow.recording import record
from rnnscope.models.cells import CELLS
from rnnscope.numerics import flush_denormal
from rnnscope.rundir.directory import CONFIG, METRICS, read_records
from rnnscope.tasks import TASKS, task_settings
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.history import context_at
from rnnscope.training.predict import PREDICT_STEPS, short_run
from rnnscope.training.run import build_error

EXAMPLES = """\
examples:
  # why does a tanh RNN fail the adding problem at T=200?
  rnnscope diagnose --task adding --seq-len 200 --cell rnn_tanh --init xavier_uniform

  # does chrono init fix it for an LSTM? machine-readable output
  rnnscope diagnose --task adding --seq-len 200 --cell lstm --init chrono:200 --json

  # any task's settings as --task.KEY=VALUE: permuted pixel digits, a CSV column
  rnnscope diagnose --task digits --task.permuted=true --cell lstm
  rnnscope diagnose --task series --task.path=co2.csv --task.columns=co2 --seq-len 100

  # will it learn? a prediction from a short run (50 Adam steps at --lr) rather than the
  # initial weights: gates that learn to remember, a memory that collapses, updates too
  # small to move the weights, a truncation window shorter than the task needs
  rnnscope diagnose --task adding --seq-len 200 --cell gru --init orthogonal --predict
  rnnscope diagnose --task temporal_order --seq-len 200 --cell lstm --init chrono:200 \
      --predict --bptt.window=25 --lr 0.01

  # a trained model: weights from a checkpoint (a state_dict, or {"model": state_dict});
  # one in a run directory is told the run's history up to it, as the trainer was
  rnnscope diagnose --cell lstm --hidden 128 --checkpoint runs/lstm/checkpoints/last.pt

Exit codes: 0 done, 2 bad input. Writes flow.png and diagnosis.json under --out: a new
or empty directory, or one that holds only an earlier diagnosis.
"""

OUT_FILES = ("flow.png", "diagnosis.json")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "diagnose", help="record gradient flow through time and say what is wrong",
        description="Run one batch of a task through the model, record dL/dh_t for every "
        "layer and step, and print the verdict (vanishing, exploding, healthy, nonfinite), "
        "the reach, the rate and ranked fixes.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="adding", help=f"one of: {', '.join(sorted(TASKS))}")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="sequence length T, for tasks that take one (default: the task's)")
    parser.add_argument("--cell", default="rnn_tanh", help=f"one of: {', '.join(CELLS)}")
    parser.add_argument("--init", default="torch_default",
                        help="scheme[:argument], e.g. orthogonal, chrono:200, spectral:3.0")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="load model weights from this file")
    parser.add_argument("--predict", action="store_true",
                        help="train --predict-steps steps first (Adam at --lr, in a temporary "
                        "run directory) and diagnose the model as it starts to learn")
    parser.add_argument("--predict-steps", type=int, default=PREDICT_STEPS,
                        help=f"steps of the short run (default {PREDICT_STEPS})")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (optim.lr)")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnose"),
                        help="directory for flow.png and diagnosis.json")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.set_defaults(func=run, overrides=("task", "optim", "clip", "bptt"))


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    # Validate everything before touching --out, so bad input leaves nothing behind.
    _check_out(args.out)
    config = _config(args)
    try:
        task = config.task.build()
        torch.manual_seed(args.seed)
        model = config.model.build(task.input_size, task.output_size)
        config.init.apply(model)
        inputs, targets = task.batch(args.batch, torch.Generator().manual_seed(args.seed))
    except (RuntimeError, MemoryError) as error:
        raise build_error(error) from None
    if args.checkpoint is not None and args.predict:
        raise ValueError("predict: trains from the initial weights; drop --checkpoint")
    context = Context(horizon=task.reach_needed, window=config.bptt.window,
                      nearest=task.nearest_dependency, initial=args.checkpoint is None)
    history, told = None, config  # told: the settings the fixes are sized and sifted by
    if args.checkpoint is not None:
        step = _load_checkpoint(model, args.checkpoint)
        history = _run_history(args.checkpoint, step, config) or None
        if history is not None and "context" in history:
            # The trainer's history of these weights, as it told it; its rate and
            # settings (clipping, init, the rate itself) are those in force.
            context, told = history.pop("context"), history.pop("config")
    if args.predict:
        run = short_run(config, integer("--predict-steps", args.predict_steps, 1))
        if run.weights is not None:  # None: it diverged at once; the initial weights tell
            model.load_state_dict(run.weights)
        context = run.context

    flush_denormal(True)  # see DESIGN.md: subnormals make CPU steps 10x slower
    with record(model, cell_state=True) as recorder:
        output, _ = model(inputs)
        loss = task.loss(output, targets)
        loss.backward()
    result = diagnose(recorder, lr=told.optim.lr, current=told.as_flags(), context=context)

    seq_len = getattr(task, "seq_len", None)
    title = f"{args.task} T={seq_len}: {args.cell}, init {args.init} -> {result.verdict}"
    plot = plot_flow_profile(recorder.flow.to_dict(), args.out / "flow.png", title=title)
    summary = {
        "task": args.task, "task_settings": dict(config.task.settings), "seq_len": seq_len,
        "cell": args.cell, "init": args.init,
        "hidden": args.hidden, "layers": args.layers, "loss": loss.item(),
        **result.to_dict(), "history": history, "plot": str(plot),
        "flow": recorder.flow.norms.tolist(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(args.out / "diagnosis.json", summary)
    if args.json:
        summary.pop("flow")
        print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    else:
        _print(args, seq_len, loss.item(), result, plot, history)
    return EXIT_OK


def _run_history(checkpoint: Path, step: int | None, config: ExperimentConfig) -> dict:
    """For a trainer's checkpoint in its run directory (RUN/checkpoints/NAME.pt, beside
    RUN's config.yaml and metrics.jsonl): what the trainer would tell the diagnosis of
    its weights, the weights after `step` updates: {"run_dir", "step", "recordings",
    "context", "config"}. Read only where it is the trainer's history of this model and
    task: the checkpoint says its step, metrics.jsonl reaches it, and the run trained the
    task, model and window the flags name; otherwise {"note": why not} (the weights are
    diagnosed alone, as before), and nothing at all outside a run directory."""
    run = checkpoint.resolve().parent.parent
    if not ((run / METRICS).is_file() and (run / CONFIG).is_file()):
        return {}
    try:
        run_config = ExperimentConfig.from_dict(read_yaml(run / CONFIG))
    except (OSError, ValueError) as error:
        return {"note": f"{run / CONFIG} does not read ({str(error).splitlines()[0][:200]})"}
    for field, ours, theirs in (
            ("task", config.task.name, run_config.task.name),
            ("task settings", _effective(config), _effective(run_config)),
            ("cell", config.model.cell, run_config.model.cell),
            ("hidden", config.model.hidden, run_config.model.hidden),
            ("layers", config.model.layers, run_config.model.layers),
            ("bptt.window", config.bptt.window, run_config.bptt.window)):
        if ours != theirs:
            return {"note": f"the run trained {field} {theirs}, the flags say {ours}"}
    if step is None:
        return {"note": "the checkpoint does not say its step"}
    try:
        lines = read_records(run / METRICS) or []
        if not any(line.get("kind") == "train" and line.get("step") == step
                   for line in lines) and step > 0:
            return {"note": f"{run / METRICS} does not reach step {step}"}
        # The weights after `step` updates: what a probe at step + 1 records, told the
        # evaluation of those very weights (at `step`), not a later one.
        context = context_at(run_config, lines, step + 1, evaluated_by=step)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        return {"note": f"{run / METRICS} does not read ({type(error).__name__})"}
    return {"run_dir": str(run), "step": step, "recordings": len(context.earlier_reach),
            "context": context, "config": run_config}


def _effective(config: ExperimentConfig) -> dict:
    """A config's task settings with the task's defaults filled in (what it trained on)."""
    defaults = task_settings(config.task.name) if config.task.name in TASKS else {}
    return {**defaults, **config.task.settings}


def _check_out(out: Path) -> None:
    """--out: new, empty, or an earlier diagnosis (its two files); never a directory of
    someone else's files, which flow.png and diagnosis.json could overwrite."""
    try:
        if out.exists() and not out.is_dir():
            raise ValueError(f"out: {out} exists and is not a directory")
        if out.is_dir():
            foreign = sorted(entry.name for entry in out.iterdir()
                             if entry.name not in OUT_FILES)
            if foreign:
                raise ValueError(f"out: {out} holds files that are not a diagnosis's (e.g. "
                                 f"{foreign[0]}); choose a new or empty directory")
            for name in OUT_FILES:
                check_file_target("out", out / name)
        elif blocking_file(out) is not None:
            raise ValueError(f"out: cannot create {out} ({blocking_file(out)} is a file, "
                             f"not a directory)")
    except OSError as error:
        raise ValueError(f"out: cannot use {out} ({reason(error)})") from None


def _config(args: argparse.Namespace) -> ExperimentConfig:
    """The command's settings as the experiment config they are part of: each value is
    checked there, as for `rnnscope train`."""
    task = {"name": args.task, **args.overrides.get("task", {})}
    if args.seq_len is not None:
        if args.task in TASKS and "seq_len" not in task_settings(args.task):
            raise ValueError(f"seq-len: task {args.task!r} has a fixed length; it takes "
                             f"{', '.join(task_settings(args.task)) or 'no settings'}")
        task["seq_len"] = args.seq_len
    sections = {section: dict(values) for section, values in args.overrides.items()
                if section != "task" and values}
    if args.lr is not None:
        sections.setdefault("optim", {})["lr"] = args.lr
    return ExperimentConfig.from_dict({
        "task": task, "model": {"cell": args.cell, "hidden": args.hidden,
                                "layers": args.layers},
        "init": args.init, "run": {"batch": args.batch, "seed": args.seed}, **sections})


def _print(args: argparse.Namespace, seq_len, loss: float, result, plot: Path,
           history: dict | None) -> None:
    print(f"{args.task} T={seq_len}, {args.cell} (init {args.init}), hidden "
          f"{args.hidden}: loss {loss:.4g}")
    if history is not None and "note" in history:
        print(f"history: not read ({history['note']}); the weights are diagnosed alone")
    elif history is not None:
        print(f"history: the run in {history['run_dir']}, after {history['step']} updates "
              f"({history['recordings']} earlier recordings read, as the trainer told them)")
    print(f"verdict: {result.verdict}   reach: {result.reach}/{result.steps} steps   "
          f"rate: x{result.rate:.3g} per step")
    print(f"  {result.summary()}")
    for rank, fix in enumerate(result.fixes[:3], 1):
        print(f"fix {rank}: {fix.remedy}: {fix.cli}")
    print(f"plot: {plot}")


def _load_checkpoint(model: torch.nn.Module, path: Path) -> int | None:
    """Load the weights into `model`; the checkpoint's step (updates done) when it is a
    trainer's checkpoint, else None."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a file that is not a checkpoint
        raise ValueError(f"checkpoint: cannot read {path} as a torch checkpoint "
                         f"({type(error).__name__})") from None
    step = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        step = state.get("step") if isinstance(state.get("step"), int) and not isinstance(
            state.get("step"), bool) and state["step"] >= 0 else None
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: {path} holds no state_dict")
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k} has shape {tuple(state[k].shape)}, the model {tuple(v.shape)}"
                 for k, v in expected.items()
                 if k in state and getattr(state[k], "shape", None) != v.shape]
    if problems:
        raise ValueError(f"checkpoint: {path} does not fit the model built from --cell, "
                         f"--hidden and --layers: {'; '.join(problems[:3])}")
    model.load_state_dict(state)
    return step
