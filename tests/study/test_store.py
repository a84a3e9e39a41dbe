"""`study.store.StudyStore` (study.db): claims are exclusive under concurrent workers, an
attempt changes a run only while it owns it, and results survive as strict JSON."""

from __future__ import annotations

import math
import random
import threading

import pytest

from rnnscope.study.store import StudyStore


def make_store(tmp_path, count: int = 3) -> StudyStore:
    store = StudyStore(tmp_path / "study.db")
    store.add([(f"run{i}", {"run.seed": i}, {"run": {"seed": i}}) for i in range(count)])
    return store


def row(store: StudyStore, name: str):
    return next(r for r in store.rows() if r.name == name)


def test_rows_keep_the_order_runs_were_added(tmp_path):
    store = make_store(tmp_path, 3)
    rows = store.rows()
    assert [r.name for r in rows] == ["run0", "run1", "run2"]
    assert rows[1].params == {"run.seed": 1} and rows[1].config == {"run": {"seed": 1}}
    assert {r.status for r in rows} == {"pending"}
    assert all(r.attempts == 0 and r.finishes == 0 and r.result is None for r in rows)
    assert store.counts() == {"pending": 3, "running": 0, "done": 0, "error": 0}


def test_racing_workers_claim_disjoint_runs_and_every_run_once(tmp_path):
    names = [f"run{i}" for i in range(120)]
    setup = StudyStore(tmp_path / "study.db")
    setup.add([(name, {}, {"n": name}) for name in names])
    workers, start = 4, threading.Barrier(4)
    claimed: list[list[str]] = [[] for _ in range(workers)]

    def worker(index: int) -> None:
        store = StudyStore(tmp_path / "study.db")  # a connection of its own, as a process has
        order = names[:]
        random.Random(index).shuffle(order)  # different orders collide more often
        start.wait()
        for name in order:
            if store.claim(name, f"{index}:owner"):
                claimed[index].append(name)
        store.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    every = [name for mine in claimed for name in mine]
    assert sorted(every) == sorted(names)  # each run claimed, and by one worker only
    rows = setup.rows()
    assert all(r.status == "running" and r.attempts == 1 for r in rows)
    assert setup.counts()["running"] == len(names)
    setup.close()


def test_claim_refuses_a_running_or_done_run_and_retries_an_error(tmp_path):
    store = make_store(tmp_path)
    assert store.claim("run0", "a") and not store.claim("run0", "b")
    assert store.finish("run0", "a", "done", {"metric": 1.0})
    assert not store.claim("run0", "b")  # nothing finished is redone
    assert store.claim("run1", "a") and store.finish("run1", "a", "error", {"message": "x"})
    assert store.claim("run1", "b")  # a failed run is tried again
    assert row(store, "run1").attempts == 2 and row(store, "run1").status == "running"
    assert not store.claim("missing", "a")


def test_finish_by_a_stale_owner_changes_nothing(tmp_path):
    store = make_store(tmp_path)
    assert store.claim("run0", "old")
    assert store.reset_running() == 1  # a new study took over after the old one died
    assert store.claim("run0", "new")
    before = row(store, "run0")
    assert store.finish("run0", "old", "done", {"metric": 0.0}) is False
    assert row(store, "run0") == before  # still the new attempt's: running, no result
    assert before.status == "running" and before.result is None and before.finishes == 0

    assert store.finish("run0", "new", "done", {"metric": 0.5}) is True
    assert store.finish("run0", "new", "done", {"metric": 9.9}) is False  # not twice
    done = row(store, "run0")
    assert done.status == "done" and done.finishes == 1 and done.result == {"metric": 0.5}
    assert done.attempts == 2 and done.seconds is not None and done.seconds >= 0


def test_finish_checks_the_status_it_is_given(tmp_path):
    store = make_store(tmp_path)
    assert store.claim("run0", "a")
    with pytest.raises(ValueError, match="status: expected done or error"):
        store.finish("run0", "a", "solved", {})
    assert row(store, "run0").status == "running"


def test_release_returns_a_run_to_pending_for_its_owner_only(tmp_path):
    store = make_store(tmp_path)
    assert store.claim("run0", "a")
    store.release("run0", "b")  # not the owner: no effect
    assert row(store, "run0").status == "running"
    store.release("run0", "a")
    released = row(store, "run0")
    assert released.status == "pending" and released.attempts == 1
    assert store.claim("run0", "b")  # can be taken again
    assert row(store, "run0").attempts == 2


def test_add_is_idempotent_and_refuses_a_changed_config(tmp_path):
    store = make_store(tmp_path, 2)
    assert store.claim("run0", "a") and store.finish("run0", "a", "done", {"metric": 1.0})
    # The same runs again, plus a new one: nothing stored changes, the new one is added.
    store.add([(f"run{i}", {"run.seed": i}, {"run": {"seed": i}}) for i in range(3)])
    assert [r.name for r in store.rows()] == ["run0", "run1", "run2"]
    assert row(store, "run0").status == "done"

    with pytest.raises(ValueError, match="'run1'") as error:
        store.add([("run1", {"run.seed": 1}, {"run": {"seed": 7}})])
    assert "\n" not in str(error.value) and "another config" in str(error.value)
    assert row(store, "run1").config == {"run": {"seed": 1}}


def test_add_is_all_or_nothing(tmp_path):
    store = make_store(tmp_path, 1)
    with pytest.raises(ValueError, match="run0"):
        store.add([("new", {}, {}), ("run0", {}, {"changed": True})])
    assert [r.name for r in store.rows()] == ["run0"]  # "new" rolled back with the error


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    store = make_store(tmp_path)
    assert store.claim("run0", "a")
    assert store.finish("run0", "a", "done", {"final_loss": math.nan, "lyapunov": [math.inf,
                                                                                 -1.5]})
    assert row(store, "run0").result == {"final_loss": None, "lyapunov": [None, -1.5]}


def test_a_second_connection_sees_every_change(tmp_path):
    writer = make_store(tmp_path)
    reader = StudyStore.existing(tmp_path / "study.db")
    assert writer.claim("run2", "a") and writer.finish("run2", "a", "error", {"message": "m"})
    assert row(reader, "run2").result == {"message": "m"}
    assert reader.counts() == {"pending": 2, "running": 0, "done": 0, "error": 1}
    with pytest.raises(ValueError, match="not a study store"):
        StudyStore.existing(tmp_path / "absent.db")
