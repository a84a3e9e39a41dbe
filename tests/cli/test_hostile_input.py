"""Issue 19, item by item: nothing lost, nothing overwritten, one clear line for every bad
input. Each test names the item it keeps fixed; the commands run as a user runs them
(in-process through the entry point, or in a subprocess where a limit is needed)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys

import pytest
import torch

from rnnscope.cli import study as study_cli
from rnnscope.cli.main import main
from support import TINY_STUDY, one_line_error, write_yaml_file

SMALL = ["--seq-len", "10", "--hidden", "8", "--batch", "4", "--quiet",
         "--probe.histograms=false"]


def train(out, *extra: str, steps: int = 15) -> int:
    return main(["train", *SMALL, "--steps", str(steps), "--out", str(out), *extra])


def lines_of(path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of 15 steps, checkpointed every 5; tests damage copies of it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train(run, "--run.checkpoint_every=5") == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "run")


# 1. Data lost: a damaged metrics line cut the file on resume.

@pytest.mark.parametrize("damage", ["", "garbage{", "\xff\xfe not UTF-8"])
def test_1_resume_keeps_every_line_after_a_damaged_one(run, capsys, damage):
    metrics = run / "metrics.jsonl"
    before, summary = lines_of(metrics), json.loads((run / "summary.json").read_text())
    assert len(before) == 16  # 15 train lines, 1 eval line
    damaged = before[:10] + [damage] + before[10:]  # at line 11, as in the issue
    metrics.write_bytes("".join(f"{line}\n" for line in damaged).encode("latin-1"
                        if damage.startswith("\xff") else "utf-8"))
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert lines_of(metrics) == before  # the lines after the damaged one are all there
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["final_loss"] == summary["final_loss"]  # not rewritten from line 10
    err = capsys.readouterr().err
    if damage:  # reported, and kept out of metrics.jsonl but not lost
        assert err == (f"rnnscope: note: metrics.jsonl: 1 damaged line left out (line 11); "
                       f"every other line is kept (moved to {run / 'metrics.damaged'})\n")
        assert (run / "metrics.damaged").read_bytes().startswith(damage.encode(
            "latin-1" if damage.startswith("\xff") else "utf-8"))
    else:  # a blank line holds nothing
        assert err == "" and not (run / "metrics.damaged").exists()


# 2. User files overwritten by `train --out` into a folder that is not a run.

def test_2_train_refuses_a_folder_of_someone_elses_files(tmp_path, capsys):
    folder = tmp_path / "u"
    folder.mkdir()
    (folder / "summary.json").write_text('{"my": 1}')
    (folder / "metrics.jsonl").write_text("mine\n")
    assert train(folder, steps=5) == 2
    assert one_line_error(capsys) == (f"rnnscope: error: out: {folder} holds files that are "
                                      f"not a run's (e.g. metrics.jsonl); choose a new or "
                                      f"empty directory\n")
    assert (folder / "summary.json").read_text() == '{"my": 1}'
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl", "summary.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(empty, steps=2) == 0  # an empty folder is fine


# 4. Tracebacks.

@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_4_a_huge_hidden_size_is_refused_before_any_allocation(tmp_path, capsys, command):
    args = ["--hidden", "100000", "--out", str(tmp_path / "x")]
    assert main([command, *args, *(["--steps", "2"] if command == "train" else [])]) == 2
    err = one_line_error(capsys)
    assert err.startswith("rnnscope: error: model.hidden: 1 ") and "100,000 units" in err
    assert "at most 100,000,000" in err and "choose a smaller model.hidden" in err
    assert not (tmp_path / "x").exists()


def test_4_an_empty_held_out_split_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "digits", "--task.valid_fraction=0.0001", "--steps",
                 "2"]) == 2
    assert "task.valid_fraction: 0.0001 of 1797 images holds out 0; accepted:" in \
        one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


CHECKPOINT_DAMAGE = [
    ({"optimizer": 5}, "optimizer: must be a mapping, got int"),
    ({"step": -5}, "step: must be an integer in 0..15, got -5"),
    ({"step": 10**6}, "step: must be an integer in 0..15, got 1000000"),  # item 5
    ({"step": 10, "status": "finished"}, "status: finished, but step 10 is not run.steps"),
    ({"rng": {"data": "x", "torch": "y"}}, "rng.data: must be a generator state"),
    ({"guard": {"skipped": 0, "rollbacks": 0, "consecutive": 0, "survived": 0,
                "good_state": 5, "candidate": None}}, "guard.good_state: must be none or"),
    ({"schedule": {"scale": "x"}}, "does not fit the run's config.yaml (ValueError"),
    ({"lr_total": "x"}, "lr_total: must be none or a finite number >= 0, got 'x'"),
    ({"evaluated_lr_total": -1.0}, "evaluated_lr_total: must be none or a finite number"),
]


@pytest.mark.parametrize(("change", "message"), CHECKPOINT_DAMAGE)
def test_4_and_5_a_checkpoint_with_wrong_fields_is_named_and_changes_nothing(
        run, capsys, change, message):
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "status": "running", **change}, last)
    before = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"rnnscope: error: resume: {last}") and message in err, err
    assert (run / "metrics.jsonl").read_bytes() == before  # step -5 used to empty it


def run_limited(args: list[str], file_size: int | None, cwd) -> subprocess.CompletedProcess:
    """`rnnscope ARGS` in a subprocess whose files may not grow past `file_size` bytes:
    the kernel refuses the write (EFBIG), as a full disk refuses it (ENOSPC)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run([sys.executable, "-m", "rnnscope", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd,
                          preexec_fn=limit if file_size is not None else None)


def test_4_a_full_disk_in_train_is_one_line_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["train", *SMALL, "--steps", "60", "--probe.every=1",
            "--run.checkpoint_every=10", "--out", str(run)]
    full = run_limited(args, 20_000, tmp_path)
    assert full.returncode == 2, full.stderr
    assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.startswith(f"rnnscope: error: out: cannot write {run}")
    assert "(file too large (disk full or a file-size limit))" in full.stderr
    assert f"continue with: rnnscope train --resume --out {run}" in full.stderr
    done = run_limited(["train", "--resume", "--out", str(run), "--quiet"], None, tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line)["step"] for line in lines_of(run / "metrics.jsonl")
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 61))  # every step once: nothing lost, nothing twice


def test_4_a_full_disk_in_a_study_is_one_line_and_status_says_stopped(tmp_path):
    study = write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY,
                                                  "grid": {"seed": [0, 1]}})
    out = tmp_path / "out"
    full = run_limited(["study", str(study), "--out", str(out), "--quiet"], 40_000, tmp_path)
    assert full.returncode in (1, 2) and "Traceback" not in full.stderr, full.stderr
    assert all(line.startswith("rnnscope: ") for line in full.stderr.splitlines())
    assert "cannot write" in full.stderr
    status = run_limited(["study", "--status", str(out)], None, tmp_path)
    assert status.returncode == 0 and ": running" not in status.stdout, status.stdout
    again = run_limited(["study", str(study), "--out", str(out), "--json"], None, tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["counts"] == {"done": 2}
    assert all(run["finishes"] == 1 for run in summary["runs"])


# 6. Unclear messages.

@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "99999999999999999999999"],
     "run.seed: must be an integer in 0..4294967295, got 99999999999999999999999"),
    (["--run.name=" + "a" * 300], "run.name: must be at most 100 characters, got 300"),
    (["--run.name=" + "\u20ac" * 90], "run.name: must be at most 255 bytes in UTF-8"),
    (["--run.name=" + "n" * 30_000_000], "run.name: must be at most 100 characters, got "
                                         "30,000,000"),
])
def test_6_values_are_named_with_what_is_accepted(tmp_path, capsys, monkeypatch, args,
                                                  message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--steps", "2", *args]) == 2
    err = one_line_error(capsys)
    assert message in err and len(err) < 300
    assert list(tmp_path.iterdir()) == []  # no empty runs/ left behind


def test_6_out_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    assert train(tmp_path / "afile" / "run", steps=2) == 2
    assert one_line_error(capsys) == (f"rnnscope: error: out: cannot create "
                                      f"{tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} "
                                      f"is a file, not a directory\n")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_6_a_read_only_out_is_named(tmp_path):
    """A read-only file system, mounted in a mount namespace of the test's own."""
    target = tmp_path / "ro"
    target.mkdir()
    command = (f"mount -t tmpfs -o ro,size=64k none {target} && exec {sys.executable} -m "
               f"rnnscope train --steps 2 --quiet --out {target / 'run'}")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             command], capture_output=True, text=True, timeout=300)
    if "mount" in result.stderr and "rnnscope" not in result.stderr:
        pytest.skip(f"cannot mount here: {result.stderr.strip()}")
    assert result.returncode == 2
    assert result.stderr == (f"rnnscope: error: out: cannot create {target / 'run'} "
                             f"(read-only file system)\n")


def test_6_too_many_workers_need_force(tmp_path, capsys):
    study = write_yaml_file(tmp_path / "s.yaml", {"base": TINY_STUDY})
    out = tmp_path / "out"
    assert main(["study", str(study), "--workers", "1000", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "--workers: at most " in err and "got 1,000; add --force" in err
    assert not out.exists()
    assert main(["study", str(study), "--workers", "1000", "--force", "--out", str(out),
                 "--quiet"]) == 0  # one run: one process, as many as there are runs


def test_6_a_very_large_grid_needs_yes(tmp_path, capsys, monkeypatch):
    grid = {"seed": list(range(100)), "task.seq_len": list(range(5, 105))}  # 10,000 runs
    study = write_yaml_file(tmp_path / "big.yaml", {"base": TINY_STUDY, "grid": grid})
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 2
    assert one_line_error(capsys) == (
        "rnnscope: error: study: 10,000 runs, more than 500; at a minute a run that is "
        "6.9 days of work; confirm with --yes\n")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["study", str(study), "--out", str(tmp_path / "out")]) == 2
    assert "study: not started (answer y, or give --yes)" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    huge = write_yaml_file(tmp_path / "huge.yaml", {"base": TINY_STUDY, "grid": {
        "seed": list(range(1000)), "task.seq_len": list(range(5, 1005))}})
    assert main(["study", str(huge), "--yes"]) == 2
    assert "study.grid: 1,000,000 combinations; at most 100,000" in one_line_error(capsys)
    # Confirmed, a large study runs: here "large" is lowered to 2 runs.
    monkeypatch.setattr(study_cli, "CONFIRM_RUNS", 2)
    small = write_yaml_file(tmp_path / "small.yaml", {"base": TINY_STUDY,
                                                      "grid": {"seed": [0, 1, 2]}})
    assert main(["study", str(small), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert main(["study", str(small), "--out", str(tmp_path / "s"), "--quiet",
                 "--yes"]) == 0
