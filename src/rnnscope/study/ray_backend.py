"""A study's runs as Ray tasks: `rnnscope study FILE --backend ray [--address HOST:PORT]`.

    driver (the study process): holds study.lock and is the only writer of study.db
      claim the run in study.db -> submit a task with the run's CPU (and GPU) share
    task, on any node of the cluster:
      train into <out>/runs/<name>/ (attempt.train_run: continues from the checkpoint of
      an earlier attempt, takes a run that already ended as it is) -> its outcome
    driver:
      finish the run in study.db, only while this attempt still owns it
      the task's worker or node died: give the run back and claim it again (attempts
      + 1), submit it again: it continues from checkpoints/last.pt; a run whose worker
      died RETRIES + 1 times is stored as an error

Ray's own task retries are off (max_retries=0): each retry is claimed in study.db by
the driver, so `--status` counts it and no two attempts ever own a run.

The nodes write the run directories themselves, so the study directory (--out) must be
on a path every node sees at the same place (NFS, a cluster file system); a task that
cannot see it stops the study with an error that says so. Every node needs rnnscope
(the same version) and the driver's version of Ray. Only this module imports Ray, and
only `rnnscope study --backend ray` imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray import exceptions as ray_errors

from rnnscope.checks import integer, number
from rnnscope.study.attempt import Outcome, WorkerDied, new_owner, train_run
from rnnscope.study.spec import Study
from rnnscope.study.store import STUDY_DB, StudyStore

RETRIES = 3  # after a worker died: as Ray's default for tasks
# The worker (or its node, or its memory) is gone, not the run: try it again.
DIED = (ray_errors.WorkerCrashedError, ray_errors.NodeDiedError, ray_errors.OutOfMemoryError,
        ray_errors.LocalRayletDiedError, ray_errors.ObjectLostError)
UNSEEN = "unseen"  # the outcome of a task whose node does not see the study directory
PROBE_SECONDS = 5.0


@ray.remote
def _train_task(directory: str, name: str, config: dict, threads: int) -> Outcome:
    if not (Path(directory) / STUDY_DB).is_file():
        return UNSEEN, {"node": socket.gethostname()}
    torch.set_num_threads(threads)  # the task's CPU share, not the node's every core
    return train_run(Path(directory), name, config)


@dataclass
class _Attempt:
    name: str
    owner: str
    deaths: int  # how often a worker died under this run in this study process


class RayRunner:
    """Runs a study's runs as Ray tasks: `workers` at once (default: as many as the
    cluster's CPUs allow), each with `cpus_per_run` CPUs and `gpus_per_run` GPUs."""

    def __init__(self, *, workers: int | None = None, address: str | None = None,
                 cpus_per_run: int | None = None, gpus_per_run: float | None = None) -> None:
        self.workers = None if workers is None else integer("--workers", workers, 1)
        self.address = None if address is None else _checked_address(address)
        self.cpus = 1 if cpus_per_run is None else integer("--cpus-per-run", cpus_per_run, 1)
        self.gpus = 0.0 if gpus_per_run is None else _gpu_share(gpus_per_run)

    def describe(self) -> str:
        where = {None: "Ray", "auto": "a running Ray cluster"}.get(
            self.address, f"the Ray cluster at {self.address}")
        share = f"{self.cpus} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"on {where}, {share} per run"

    @contextmanager
    def session(self, study: Study) -> Iterator[None]:
        """Connected to the cluster (without an address: a new local Ray) and checked
        that the runs fit it, before anything is written; at the end this process
        disconnects (a local Ray it started stops), and a Ray that the caller had
        already initialised is left as it was."""
        self._check_devices(study)
        started = _connect(self.address)
        try:
            self._check_fits()
            yield
        finally:
            if started:
                ray.shutdown()

    def run(self, todo: list[str], directory: Path, configs: dict[str, dict],
            store: StudyStore, report: Callable[[str], None]) -> None:
        def task(name: str):  # Ray's retries off: the driver claims every retry itself
            return _train_task.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
                                       name=f"rnnscope:{name}")  # ps on a node: ray::rnnscope:<run>

        _Driver(task, directory, configs, store, report, self.cpus).drive(todo, self._slots)

    def _slots(self) -> int:
        """Runs in flight at once: --workers, else as many as the cluster holds now (read
        each time, so nodes that join are used)."""
        if self.workers is not None:
            return self.workers
        total = ray.cluster_resources()
        slots = int(total.get("CPU", 0) // self.cpus)
        if self.gpus:
            slots = min(slots, int(total.get("GPU", 0) // self.gpus))
        return max(1, slots)

    def _check_devices(self, study: Study) -> None:
        for run in study.runs:
            device = run.config.run.device
            if device == "cuda" and not self.gpus:
                raise ValueError(f"--gpus-per-run: run {run.name} has run.device: cuda, which "
                                 f"on Ray needs a GPU share (e.g. --gpus-per-run 1); or set "
                                 f"run.device: auto to train on a GPU only where one is given")
            if device == "cpu" and self.gpus:
                raise ValueError(f"--gpus-per-run: run {run.name} has run.device: cpu and "
                                 f"would leave its GPU idle; set run.device: cuda or auto in "
                                 f"the study file, or leave out --gpus-per-run")

    def _check_fits(self) -> None:
        """A run that no node can hold would wait for ever: refuse it now."""
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        if any(node.get("CPU", 0) >= self.cpus and node.get("GPU", 0) >= self.gpus
               for node in nodes):
            return
        cpus = max((node.get("CPU", 0) for node in nodes), default=0)
        gpus = max((node.get("GPU", 0) for node in nodes), default=0)
        if self.cpus > cpus:
            raise ValueError(f"--cpus-per-run: {self.cpus} CPUs for one run, but the largest "
                             f"node of the Ray cluster has {cpus:g}; accepted here: 1.."
                             f"{max(1, int(cpus))}")
        if self.gpus > gpus:
            raise ValueError(f"--gpus-per-run: {self.gpus:g} GPU for one run, but the largest "
                             f"node of the Ray cluster has {gpus:g}; accepted here: 0"
                             + (f"..{gpus:g}" if gpus else " (runs with run.device: auto "
                                "then train on CPU)"))
        raise ValueError(f"--cpus-per-run: no node of the Ray cluster has both {self.cpus} "
                         f"CPUs and {self.gpus:g} GPU for one run; ask for fewer CPUs per run")


class _Driver:
    """The driver's side of one study on Ray: the runs in flight and their attempts."""

    def __init__(self, task, directory: Path, configs: dict[str, dict], store: StudyStore,
                 report: Callable[[str], None], threads: int) -> None:
        self.task, self.configs, self.store, self.report = task, configs, store, report
        self.root = str(Path(directory).resolve())  # a task's working directory is not ours
        self.threads = threads
        self.flight: dict[ray.ObjectRef, _Attempt] = {}

    def drive(self, todo: list[str], slots: Callable[[], int]) -> None:
        queue = deque(todo)
        try:
            while queue or self.flight:
                while queue and len(self.flight) < slots():
                    self.submit(queue.popleft(), deaths=0)
                if self.flight:
                    ref = _next_ready(list(self.flight))
                    self.collect(ref, self.flight.pop(ref))
        except BaseException:
            self.abandon()
            raise

    def submit(self, name: str, deaths: int) -> None:
        owner = new_owner()
        if not self.store.claim(name, owner):  # claimed before any node trains it
            return
        try:
            ref = self.task(name).remote(self.root, name, self.configs[name], self.threads)
        except BaseException:
            self.store.release(name, owner)
            raise
        self.flight[ref] = _Attempt(name, owner, deaths)

    def collect(self, ref: ray.ObjectRef, attempt: _Attempt) -> None:
        """Record one task's end in study.db, or submit the run again if its worker died."""
        try:
            status, result = ray.get(ref)
        except DIED as error:
            if attempt.deaths < RETRIES:
                self.store.release(attempt.name, attempt.owner)
                self.submit(attempt.name, attempt.deaths + 1)
                return
            deaths = attempt.deaths + 1
            status, result = "error", {"message": f"{type(error).__name__}: the Ray worker "
                                       f"training it died {deaths} time{'s' * (deaths > 1)}"}
        except ray_errors.RayError as error:  # e.g. rnnscope missing on that node
            status, result = "error", {"message": _first_line(error)}
        if status == UNSEEN:
            self.store.release(attempt.name, attempt.owner)
            raise ValueError(f"out: Ray node {result['node']} does not see the study "
                             f"directory {self.root}; put --out on a path every node sees "
                             f"at the same place (NFS, a cluster file system)")
        self.store.finish(attempt.name, attempt.owner, status, result)
        self.report(attempt.name)

    def abandon(self) -> None:
        """On Ctrl-C or an error: end the tasks still in flight (force kills their
        workers, so none trains on after the study) and give their runs back."""
        for ref, attempt in self.flight.items():
            with contextlib.suppress(Exception):  # the cluster may be what failed
                ray.cancel(ref, force=True)
            self.store.release(attempt.name, attempt.owner)
        self.flight.clear()


def _connect(address: str | None) -> bool:
    """Join the cluster at `address` ("auto": the one in RAY_ADDRESS, else the latest
    `ray start` on this machine); None: RAY_ADDRESS, else a new local Ray, never one
    found lying around. True if this call connected, so the session disconnects."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    found = (os.environ.get("RAY_ADDRESS") or _latest_cluster()) if address == "auto" \
        else address
    if found not in (None, "auto", "local"):
        _probe(found)
    if ray.is_initialized():  # the caller's (a notebook, the tests): used as it is
        return False
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError,
            ray_errors.RayError) as error:
        raise ValueError(f"--address: cannot join a Ray cluster at {address} "
                         f"({_first_line(error)}); start one with `ray start --head`, and "
                         f"where it wants a token, set RAY_AUTH_MODE=token here too "
                         f"(docs/studies-on-ray.md)") from None
    return True


def _latest_cluster() -> str | None:
    """Where `--address auto` leads: the head that the latest `ray start` on this machine
    wrote down (Ray's file; it stays behind when that Ray was killed, not stopped)."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # as Ray
    try:
        return (Path(temp) / "ray" / "ray_current_cluster").read_text(
            encoding="utf-8").strip() or None
    except OSError:
        return None


def _probe(address: str) -> None:
    """Ray waits for many minutes for a head that is not there: knock once first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), PROBE_SECONDS):
            pass
    except (OSError, ValueError) as error:
        raise ValueError(f"--address: nothing answers at {address} ({type(error).__name__}); "
                         f"give the head's HOST:PORT as `ray start --head` printed it (port "
                         f"6379 by default); after a `ray start` that was killed, run "
                         f"`ray stop`") from None


def _checked_address(address) -> str:
    host, colon, port = str(address).removeprefix("ray://").rpartition(":")
    if address == "auto" or (colon and host and port.isdigit() and 0 < int(port) < 65536):
        return address
    raise ValueError(f"--address: expected HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), "
                     f"ray://HOST:PORT or auto, got {address!r}")


def _gpu_share(value) -> float:
    share = number("--gpus-per-run", value, minimum=0.0)
    if share > 1 and not share.is_integer():  # Ray's rule for resources above one
        raise ValueError(f"--gpus-per-run: a fraction of one GPU (0 to 1) or a whole number "
                         f"of GPUs, got {value!r}")
    return share


def _next_ready(refs: list) -> object:
    try:
        ready, _ = ray.wait(refs, num_returns=1)
    except ray_errors.RayError as error:  # the cluster itself, not one task
        raise WorkerDied(f"the Ray cluster stopped answering ({_first_line(error)}); "
                         f"finished runs are kept: run the same command again to resume"
                         ) from None
    return ready[0]


def _first_line(error: BaseException) -> str:
    cause = getattr(error, "cause", None)  # a RayTaskError wraps what the task raised
    shown = cause if isinstance(cause, BaseException) else error
    text = str(shown).strip().splitlines()
    return f"{type(shown).__name__}: {text[0]}" if text else type(shown).__name__


__all__ = ["RETRIES", "RayRunner"]
