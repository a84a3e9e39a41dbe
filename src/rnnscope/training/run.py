"""`rnnscope.train(config)`: a Trainer wired to its run directory.

It validates and builds everything before it writes anything (bad input leaves no
directory behind), saves the resolved config, attaches the listeners (metrics,
TensorBoard, checkpoints, progress bar), runs the loop, and ends with a held-out
evaluation, a diagnosis of the trained model and `summary.json`. With
`resume=True` it continues a run from `checkpoints/last.pt` (from the start if
it stopped before its first checkpoint) and ends with the same weights as an
uninterrupted run.

Under torchrun every rank calls `train`: all of them train (distributed.py),
and only rank 0 writes the run directory, logs, checkpoints and the progress bar.
"""

from __future__ import annotations

import math
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rnnscope.checks import choice, integer, number
from rnnscope.flow.diagnosis import Diagnosis
from rnnscope.numerics import flush_denormal
from rnnscope.remedies.guard import TrainingDiverged
from rnnscope.rundir.directory import RunDirectory
from rnnscope.rundir.metrics import MetricsLog
from rnnscope.rundir.tensorboard import TensorBoardLog
from rnnscope.training import distributed
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.evaluation import diagnose_trained, lyapunov_spectrum
from rnnscope.training.progress import ProgressBar, wanted
from rnnscope.training.trainer import Trainer

STATUSES = ("solved", "finished", "diverged", "failed", "interrupted")
DONE = ("solved", "finished")


@dataclass
class RunResult:
    status: str  # one of STATUSES
    steps: int
    final_loss: float
    metric_name: str
    metric: float
    baseline: float
    solved: bool
    diagnosis: Diagnosis | None
    run_dir: Path
    seconds: float
    rollbacks: int = 0
    skipped: int = 0
    clip_rate: float = 0.0
    message: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. damaged metrics lines a resume left out
    baselines: dict[str, float] = field(default_factory=dict)  # named naive forecasts, if any

    def to_dict(self) -> dict:
        diagnosis = self.diagnosis
        return {
            "status": self.status, "steps": self.steps, "final_loss": self.final_loss,
            "metric": {"name": self.metric_name, "value": self.metric},
            "baseline": self.baseline, "solved": self.solved,
            "diagnosis": None if diagnosis is None else {
                "verdict": diagnosis.verdict, "reach": diagnosis.reach,
                "rate": diagnosis.rate, "fixes": [fix.cli for fix in diagnosis.fixes[:3]]},
            "run_dir": str(self.run_dir), "seconds": round(self.seconds, 3),
            "rollbacks": self.rollbacks, "skipped": self.skipped,
            "clip_rate": self.clip_rate, "message": self.message, "notes": self.notes,
            **({"baselines": self.baselines} if self.baselines else {}),
        }


def train(config: ExperimentConfig, *, resume: bool = False) -> RunResult:
    """Train as `config` says and write the run directory (`config.run_dir`).

    `resume=True` continues the run in `config.run_dir` with the config saved there
    (only `run.quiet` is taken from `config`). Bad input raises ValueError before
    anything is written; KeyboardInterrupt is re-raised after the summary is saved.
    Under torchrun (WORLD_SIZE > 1) this starts the process group and ends it.
    """
    started = time.perf_counter()
    path = config.run_dir
    if resume:
        saved = ExperimentConfig.from_yaml(RunDirectory.existing(path).config_path)
        config = saved.with_overrides({"run": {"quiet": config.run.quiet}})
    group = distributed.from_env(config.run.device)
    try:
        result = _train(config, path, resume, group, started)
        # Ranks > 0 wait while rank 0 writes the summary: a rank that tore its group
        # down (and exited) first would abort gloo's connections under the other.
        group.barrier()
        return result
    finally:
        group.close()


def _train(config: ExperimentConfig, path: Path, resume: bool,
           group: distributed.SingleProcess, started: float) -> RunResult:
    trainer, run, checkpoint, notes = _prepare(config, path, resume, group)
    if checkpoint is not None and checkpoint.get("status") in DONE:
        return _finish(trainer, run, checkpoint["status"], "", started, notes)
    with ExitStack() as cleanup:
        metrics, board, bar = _attach(trainer, run, resume) if group.is_main else (None,) * 3
        if run is not None:
            cleanup.callback(run.close)
        if board is not None:
            cleanup.callback(board.close)
        if config.run.flush_denormal:
            flush_denormal(True)
            cleanup.callback(flush_denormal, False)
        try:
            status, message = _fit(trainer, metrics, bar)
        except KeyboardInterrupt:
            if group.is_main:
                run.write_summary({"status": "interrupted", "steps": trainer.step,
                                   "run_dir": str(run.path), "name": config.run_name,
                                   "message": "interrupted; continue with --resume"})
            raise
        if status in DONE and group.is_main:
            run.save_checkpoint("last", {**trainer.state_dict(), "status": status})
        return _finish(trainer, run, status, message, started, notes)


def _prepare(config: ExperimentConfig, path: Path, resume: bool,
             group: distributed.SingleProcess):
    """The trainer, the run directory (rank 0), the checkpoint a resume starts from and
    notes on what the resume found; every rank gets them, or every rank stops with the
    same error."""
    run, checkpoint, error, trainer, notes = None, None, None, None, []
    try:
        try:
            trainer = Trainer(config, group)  # builds the task, model and optimiser: may raise
        except (RuntimeError, MemoryError) as failure:
            raise build_error(failure) from None
        if resume:
            run = RunDirectory.existing(path)
            checkpoint = run.load_checkpoint("last")  # None: stopped before the first one
            if checkpoint is not None:
                _load(trainer, checkpoint, run)
            if group.is_main:
                _check_best(run)
                notes = [note for note in [run.cut_metrics(trainer.step)] if note]
        elif group.is_main:
            run = RunDirectory.create(path, config.to_dict())
    except (ValueError, TypeError, OSError) as failure:
        error = failure
    group.agree(error)  # every rank goes on, or every rank stops here
    return trainer, run, checkpoint, notes


def build_error(error: BaseException) -> ValueError:
    """torch failing to build the task's data, the model or the held-out batches (an
    allocation too large, a size past int64) as one line naming the settings that size
    them."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    sizes = "run.batch, task.seq_len, model.hidden or model.layers"
    if isinstance(error, MemoryError) or "alloc" in text or "out of memory" in text:
        asked = re.search(r"allocate (\d+) bytes", text)
        size = f" ({int(asked.group(1)) / 1e9:.3g} GB asked)" if asked else ""
        return ValueError(f"memory: cannot allocate the task's data and the model{size}; "
                          f"choose a smaller {sizes}")
    return ValueError(f"task: cannot build the data and the model ({text[:200]}); check "
                      f"{sizes}")


def _fit(trainer: Trainer, metrics: MetricsLog | None,
         bar: ProgressBar | None) -> tuple[str, str]:
    """Run the loop; the status and, when it did not finish, why."""
    try:
        with bar if bar is not None else ExitStack():
            return trainer.fit(), ""
    except TrainingDiverged as error:
        if error.state is not None and metrics is not None:
            metrics.after_step(error.state)  # the step the guard gave up on
        return "diverged", str(error)
    except (ValueError, RuntimeError) as error:  # e.g. a data file that runs short
        return "failed", f"step {trainer.step + 1}: {error}"


def _attach(trainer: Trainer, run: RunDirectory, resume: bool):
    """The listeners that write: metrics, TensorBoard, checkpoints, the progress bar."""
    config = trainer.config
    metrics = MetricsLog(run)
    board = TensorBoardLog(run.path, purge_step=trainer.step + 1 if resume else None,
                           title=config.run_name)
    for listener in (metrics, board):
        trainer.on("after_step", listener.after_step)
        trainer.on("on_eval", listener.on_eval)
    trainer.on("on_checkpoint", lambda trainer: run.save_checkpoint(
        "last", {**trainer.state_dict(), "status": "running"}))
    best = run.load_checkpoint("best") if resume else None
    best_metric = {"value": best["metric"] if best else math.inf}

    def keep_best(evaluation) -> None:
        if evaluation.metric < best_metric["value"]:
            best_metric["value"] = evaluation.metric
            run.save_checkpoint("best", {"step": evaluation.step, "metric": evaluation.metric,
                                         "model": trainer.model.state_dict()})

    trainer.on("on_eval", keep_best)
    bar = ProgressBar(config.run.steps, config.run_name, trainer.step) \
        if wanted(config.run.quiet) else None
    if bar is not None:
        trainer.on("after_step", bar.after_step)
        trainer.on("on_eval", bar.on_eval)
    return metrics, board, bar


def _load(trainer: Trainer, checkpoint: dict, run: RunDirectory) -> None:
    """Load `checkpoint` into the trainer, or one ValueError naming the file and field."""
    path = run.checkpoint_dir / "last.pt"
    try:
        trainer.check_state_dict(checkpoint)
        status = checkpoint.get("status", "running")
        choice("status", status, ("running", *DONE))
        if status == "finished" and checkpoint["step"] != trainer.config.run.steps:
            raise ValueError(f"status: finished, but step {checkpoint['step']} is not "
                             f"run.steps ({trainer.config.run.steps})")
    except ValueError as error:
        raise ValueError(f"resume: {path}: {error}") from None
    try:
        trainer.load_state_dict(checkpoint)
    except Exception as error:  # noqa: BLE001 - torch's loaders raise many kinds for bad state
        text = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"resume: {path} does not fit the run's config.yaml "
                         f"({type(error).__name__}: {text[:200]})") from None


def _check_best(run: RunDirectory) -> None:
    """checkpoints/best.pt, if there is one, must say which step and metric it kept."""
    best = run.load_checkpoint("best")
    if best is None:
        return
    try:
        number("metric", best.get("metric"))
        integer("step", best.get("step"), 0)
        if not isinstance(best.get("model"), dict):
            raise ValueError("model: must be a mapping of weights")
    except ValueError as error:
        raise ValueError(f"resume: {run.checkpoint_dir / 'best.pt'}: {error}; move it away "
                         f"to keep the run's best weights from here on") from None


def _finish(trainer: Trainer, run: RunDirectory | None, status: str, message: str,
            started: float, notes: list[str] | None = None) -> RunResult:
    evaluation = trainer.evaluation
    if not trainer.dist.is_main:  # rank 0 evaluates, diagnoses and reports for all
        return RunResult(
            status=status, steps=trainer.step, final_loss=math.nan,
            metric_name=trainer.task.metric_name,
            metric=evaluation.metric if evaluation else math.nan,
            baseline=trainer.task.baseline, solved=bool(evaluation and evaluation.solved),
            diagnosis=None, run_dir=run.path if run is not None else trainer.config.run_dir,
            seconds=time.perf_counter() - started, message=message)
    if evaluation is None or evaluation.step != trainer.step:
        # Alone: after a failure the other ranks may be gone.
        evaluation = trainer.evaluate(shared=False)
    diagnosis = diagnose_trained(trainer.model, trainer.held_out,
                                 lr=trainer.schedule.lr(max(trainer.step - 1, 0)),
                                 current=trainer.config.as_flags(), context=trainer.context())
    records = [r for r in run.read_metrics() if r["kind"] == "train"]
    final_loss = records[-1].get("loss") if records else None
    result = RunResult(
        status=status, steps=trainer.step,
        final_loss=final_loss if final_loss is not None else math.nan,
        metric_name=evaluation.metric_name, metric=evaluation.metric,
        baseline=trainer.task.baseline, solved=evaluation.solved, diagnosis=diagnosis,
        run_dir=run.path, seconds=time.perf_counter() - started,
        rollbacks=trainer.guard.rollbacks, skipped=trainer.guard.skipped,
        clip_rate=trainer.clipped_steps / max(trainer.step, 1), message=message,
        notes=list(notes or []), baselines=dict(getattr(trainer.task, "baselines", {})))
    # What the report needs beyond the result: the task's threshold, the diagnosis in
    # words with every fix and its reason, and the Lyapunov spectrum of the trained model.
    fields = diagnosis.report_fields()
    fields.pop("diagnosis")  # the result's own: the top fixes only
    run.write_summary({
        **result.to_dict(), "name": trainer.config.run_name, "task": trainer.task.name,
        "threshold": trainer.task.solved_below, **fields,
        "lyapunov": lyapunov_spectrum(trainer.model.rnn, trainer.held_out)})
    return result


__all__ = ["RunResult", "STATUSES", "build_error", "train"]
