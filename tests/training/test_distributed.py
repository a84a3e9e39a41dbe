"""Data-parallel training (training/distributed.py): N ranks on a global batch equal one
process on that batch, in weights, loss, gradient norm and the recorded gradient flow."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnscope
from rnnscope.cli.main import main as cli_main
from rnnscope.flow.recording import GradientFlow
from rnnscope.rundir.directory import RunDirectory
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.distributed import LOCAL, ProcessGroup, RankFailed, SingleProcess
from rnnscope.training.trainer import Trainer

TOLERANCE = 1e-8  # float64
# adding, T=20, hidden 8, global batch 8, 5 steps, the flow recorded every step, clipped
# by global norm at a threshold the gradients pass (so the clip decision is tested too).
TINY = ["--task", "adding", "--seq-len", "20", "--hidden", "8", "--batch", "8", "--steps", "5",
        "--clip", "norm:0.05", "--probe.every=1", "--probe.histograms=false",
        "--run.eval_every=0", "--run.eval_batches=1", "--run.dtype=float64", "--quiet"]


def config(out=None, **sections) -> ExperimentConfig:
    data = {"task": {"name": "adding", "seq_len": 20}, "model": {"cell": "lstm", "hidden": 8},
            "clip": "norm:0.05", "probe": {"every": 1, "histograms": False},
            "run": {"steps": 5, "batch": 8, "eval_every": 0, "eval_batches": 1,
                    "dtype": "float64", "quiet": True}}
    for section, values in sections.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) \
            else values
    if out is not None:
        data["run"] = {**data["run"], "out": str(out)}
    return ExperimentConfig.from_dict(data)


def train_records(run_dir) -> list[dict]:
    return [r for r in RunDirectory(run_dir).read_metrics() if r["kind"] == "train"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=TOLERANCE)


def test_torchrun_two_ranks_equal_one_process_on_the_global_batch(tmp_path):
    """`torchrun --nproc_per_node 2 -m rnnscope train` (gloo): same final weights, loss,
    global gradient norm, clip decisions and gradient flow as one process on the same
    global batch, and one run directory, written by rank 0 alone."""
    work = tmp_path / "ddp"
    work.mkdir()
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "rnnscope", "train", *TINY, "--out", "run", "--json"],
        cwd=work, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # rank 0 alone prints: one JSON document
    assert summary["status"] == "finished" and summary["steps"] == 5

    single = rnnscope.train(config(tmp_path / "single"))
    assert single.status == "finished"

    # Rank 1 wrote nothing: the working directory holds the one run directory, and that
    # holds one of everything.
    assert sorted(p.name for p in work.iterdir()) == ["run"]
    files = sorted(p.name for p in (work / "run").iterdir())
    assert [f for f in files if not f.startswith("events.out.tfevents")] == [
        "checkpoints", "config.yaml", "metrics.jsonl", "summary.json"]
    assert len(files) == 5  # one TensorBoard file
    assert sorted(p.name for p in (work / "run" / "checkpoints").iterdir()) == ["best.pt",
                                                                                "last.pt"]

    distributed = torch.load(work / "run" / "checkpoints" / "last.pt", weights_only=True)
    reference = torch.load(single.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert distributed["step"] == reference["step"] == 5
    assert_same_weights(distributed["model"], reference["model"])

    ours, theirs = train_records(work / "run"), train_records(single.run_dir)
    assert [r["step"] for r in ours] == [1, 2, 3, 4, 5]  # no line twice
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=TOLERANCE, abs=TOLERANCE)
        # Clipping saw the global norm: the same norm, the same decision.
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=TOLERANCE)
        assert a["clipped"] == b["clipped"]
        flow_a, flow_b = torch.tensor(a["flow"]["norms"]), torch.tensor(b["flow"]["norms"])
        assert flow_a.shape == (2, 20)  # the LSTM's h and c rows
        torch.testing.assert_close(flow_a, flow_b, rtol=TOLERANCE, atol=1e-12)
        assert (a["verdict"], a["reach"]) == (b["verdict"], b["reach"])
    assert any(r["clipped"] for r in theirs)  # the threshold bites: the norm matters
    assert summary["diagnosis"]["verdict"] == single.diagnosis.verdict
    assert summary["metric"]["value"] == pytest.approx(single.metric, rel=TOLERANCE)


def test_a_batch_that_does_not_split_evenly_is_bad_input():
    class ThreeRanks(SingleProcess):
        world_size = 3

    with pytest.raises(ValueError, match=r"^run\.batch: 8 does not split evenly across 3 "
                                         r"processes; run\.batch is the global batch"):
        Trainer(config(), ThreeRanks())


def test_run_dtype_is_checked_and_applied():
    with pytest.raises(ValueError, match=r"^run\.dtype: unknown 'float16'; accepted: "
                                         r"float32, float64$"):
        config(run={"dtype": "float16"})
    assert ExperimentConfig().run.dtype == "float32"
    trainer = Trainer(config(run={"dtype": "float32"}))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    trainer = Trainer(config())
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float64}
    assert math.isfinite(trainer.train_step().loss)


def test_one_process_context_changes_nothing():
    """The default context: the same tensors back, no process group started."""
    inputs, targets, loss = torch.ones(3, 4, 2), torch.ones(4, 1), torch.tensor(2.0)
    assert LOCAL.shard(inputs, targets, time_major_targets=False) == (inputs, targets)
    assert LOCAL.share(loss) is loss and LOCAL.reduce_gradients([], loss) is loss
    flow = GradientFlow(torch.ones(1, 3), ["rnn.l0"], [False])
    assert LOCAL.reduce_flow(flow) is flow and LOCAL.broadcast([1.0, 2.0]) == [1.0, 2.0]
    assert Trainer(config()).dist is LOCAL and not dist.is_initialized()


# Two ranks in-process (torch.multiprocessing, gloo): the reductions one by one, the copy
# task (targets [T, B]) with truncated BPTT, resume, the evaluation agreement, set-up
# failures and the CLI's one error line.

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, resume_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A caller's own group (rnnscope uses it and leaves it open), met through a file
    # rather than a port, which another process could take between probe and bind.
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'rendezvous')}",
                            rank=rank, world_size=world)
    try:
        torch.save(_scenarios(ProcessGroup("cpu")), os.path.join(out, f"rank{rank}.pt"))
        torch.save(_resume_and_cli(resume_dir), os.path.join(out, f"cli{rank}.pt"))
    finally:
        dist.barrier()  # neither rank tears the group down while the other still uses it
        dist.destroy_process_group()


def _scenarios(group: ProcessGroup) -> dict:
    rank, results = group.rank, {}
    assert dist.is_initialized() and not group.owned and group.world_size == 2

    # Gradients and loss: one all-reduce sums the ranks' shares.
    weight = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    weight.grad = torch.full((3,), rank + 1.0, dtype=torch.float64)
    results["loss"] = group.reduce_gradients([weight], torch.tensor(0.5 * (rank + 1),
                                                                     dtype=torch.float64))
    results["grad"] = weight.grad.clone()
    weight.grad = torch.full((3,), math.nan if rank == 1 else 1.0, dtype=torch.float64)
    group.reduce_gradients([weight], torch.tensor(0.0, dtype=torch.float64))
    results["nan_grad"] = weight.grad.clone()  # a NaN on one rank is a NaN on every rank

    # The flow: norms sum / N, counts add up, fractions average.
    flow = GradientFlow(torch.tensor([[1.0, 2.0]]) * (rank + 1), ["rnn.l0"], [False],
                        nonfinite=rank, subnormal_fraction=0.1 * rank,
                        underflow_fraction=0.2 * rank)
    results["flow"] = group.reduce_flow(flow)

    # Sharding: time-major inputs by column, targets by their batch dimension.
    inputs = torch.arange(24.0).view(3, 4, 2)
    results["shard_last"] = group.shard(inputs, torch.arange(4.0), time_major_targets=False)
    results["shard_every"] = group.shard(inputs, torch.arange(12).view(3, 4),
                                         time_major_targets=True)

    # The copy task (per-step targets [T, B]) in truncated BPTT windows of 7 steps.
    copy = config(task={"name": "copy", "seq_len": 4}, bptt={"window": 7},
                  run={"batch": 4}, clip="none")
    trainer = Trainer(copy, group)
    results["copy_states"] = [_numbers(trainer.train_step()) for _ in range(2)]
    results["copy_weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    # Evaluation: rank 0's numbers on every rank, whatever rank 1 computed.
    if rank == 1:
        with torch.no_grad():
            trainer.model.head.bias[0] += 1.0  # a shift of every logit would change nothing
    results["evaluation"] = trainer.evaluate(shared=True).loss
    results["evaluation_alone"] = trainer.evaluate(shared=False).loss

    # Dropout: rank 0 keeps one process's stream, rank 1 draws its own masks.
    Trainer(config(model={"layers": 2, "dropout": 0.5}), group)
    results["dropout_draw"] = torch.rand(4)

    # Set-up failures: the lowest failing rank raises its own error, the others stay quiet.
    for failing in ((1,), (0, 1)):
        error = ValueError(f"rank {rank} broke") if rank in failing else None
        try:
            group.agree(error)
            results[f"agree{failing}"] = "no error"
        except RankFailed as quiet:
            results[f"agree{failing}"] = f"quiet: {quiet}"
        except ValueError as own:
            results[f"agree{failing}"] = f"own: {own}"
    group.agree(None)
    return results


def _numbers(state) -> dict:
    return {"loss": state.loss, "grad_norm": state.grad_norm, "flow": state.flow.norms,
            "subnormal": state.flow.subnormal_fraction}


def _resume_and_cli(resume_dir: str) -> dict:
    results = {}
    resumed = rnnscope.train(ExperimentConfig().with_overrides(
        {"run": {"out": resume_dir, "quiet": True}}),
                             resume=True)
    results["resumed"] = (resumed.status, resumed.steps)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        results["code"] = cli_main(["train", *TINY[:6], "--batch", "7",
                                    "--out", os.path.join(resume_dir, "never")])
    results["stdout"], results["stderr"] = stdout.getvalue(), stderr.getvalue()
    return results


def test_two_ranks_in_process(tmp_path):
    # A run stopped after its checkpoint at step 2 (in one process) is resumed by 2 ranks.
    partial = config(tmp_path / "resume", run={"checkpoint_every": 2})
    trainer = Trainer(partial)
    run = RunDirectory.create(partial.run_dir, partial.to_dict())
    for _ in range(2):
        trainer.train_step()
    run.save_checkpoint("last", trainer.state_dict())
    whole = Trainer(partial)  # the same run, uninterrupted
    for _ in range(5):
        whole.train_step()

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), str(partial.run_dir)),
                       nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    clis = [torch.load(tmp_path / f"cli{r}.pt", weights_only=False) for r in range(2)]

    for result in ranks:
        assert result["loss"].item() == 1.5
        assert torch.equal(result["grad"], torch.full((3,), 3.0, dtype=torch.float64))
        assert result["nan_grad"].isnan().all()
        flow = result["flow"]
        assert torch.equal(flow.norms, torch.tensor([[1.5, 3.0]], dtype=torch.float64))
        assert flow.nonfinite == 1
        assert flow.subnormal_fraction == pytest.approx(0.05)
        assert flow.underflow_fraction == pytest.approx(0.1)
        assert result["agree(1,)"] == ("own: rank 1 broke" if result is ranks[1]
                                       else "quiet: rank 1 failed to set up; see its message")
        assert result["agree(0, 1)"] == ("own: rank 0 broke" if result is ranks[0]
                                         else "quiet: rank 0 failed to set up; see its message")
    inputs = torch.arange(24.0).view(3, 4, 2)
    for rank, result in enumerate(ranks):
        rows = slice(2 * rank, 2 * rank + 2)
        assert torch.equal(result["shard_last"][0], inputs[:, rows])
        assert torch.equal(result["shard_last"][1], torch.arange(4.0)[rows])
        assert torch.equal(result["shard_every"][1], torch.arange(12).view(3, 4)[:, rows])

    # The copy task with truncated BPTT: equal to one process on the global batch.
    single = Trainer(config(task={"name": "copy", "seq_len": 4}, bptt={"window": 7},
                            run={"batch": 4}, clip="none"))
    expected = [_numbers(single.train_step()) for _ in range(2)]
    for result in ranks:
        for got, want in zip(result["copy_states"], expected, strict=True):
            assert got["loss"] == pytest.approx(want["loss"], rel=TOLERANCE)
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=TOLERANCE)
            assert got["flow"].shape == (2, 24)  # h and c
            torch.testing.assert_close(got["flow"], want["flow"], rtol=TOLERANCE, atol=1e-12)
            assert got["subnormal"] == want["subnormal"]
        assert_same_weights(result["copy_weights"], single.model.state_dict())

    # The evaluation is rank 0's on both; alone, rank 1 sees its own (shifted) model.
    assert ranks[0]["evaluation"] == ranks[1]["evaluation"] == ranks[0]["evaluation_alone"]
    assert ranks[1]["evaluation_alone"] != ranks[0]["evaluation_alone"]

    # Dropout streams: rank 0's is one process's, rank 1's its own.
    Trainer(config(model={"layers": 2, "dropout": 0.5}))
    assert torch.equal(ranks[0]["dropout_draw"], torch.rand(4))
    assert not torch.equal(ranks[1]["dropout_draw"], ranks[0]["dropout_draw"])

    # Resume: both ranks loaded step 2 and ended where one uninterrupted process ends.
    assert clis[0]["resumed"] == clis[1]["resumed"] == ("finished", 5)
    assert_same_weights(
        torch.load(partial.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"],
        whole.model.state_dict())
    assert [r["step"] for r in train_records(partial.run_dir)] == [3, 4, 5]

    # A global batch that does not split: exit 2 on both ranks, one line in all.
    assert clis[0]["code"] == clis[1]["code"] == 2
    assert clis[0]["stderr"] == ("rnnscope: error: run.batch: 7 does not split evenly across "
                                 "2 processes; run.batch is the global batch, use a multiple "
                                 "of 2\n")
    assert clis[1]["stderr"] == "" and clis[0]["stdout"] == clis[1]["stdout"] == ""
    assert not (partial.run_dir / "never").exists()
