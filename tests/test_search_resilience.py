"""Crashed trials restart from their checkpoint; an interrupted search resumes without redoing trials."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from ray import tune
from search_support import tiny_dataset, write_space

from motorsearch.search.runner import run_search
from motorsearch.search.space_file import load_space
from motorsearch.search.trainable import FAULT_ENV, FAULT_MARKER, read_attempts


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("resilience_data") / "sim")


def test_killed_trial_restarts_from_its_checkpoint(local_ray, data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "2")  # test-only: the first attempt dies right after reporting epoch 2
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       epochs=3, num_samples=1, max_failures=2)
    outcome = run_search(load_space(path), verbose=0, out=io.StringIO())

    (row,) = outcome.leaderboard
    assert row.status == "finished" and row.epochs_run == 3
    assert (Path(row.path) / FAULT_MARKER).is_file()  # the process really was killed once
    attempts = read_attempts(row.path)
    assert [a["resumed_from_epoch"] for a in attempts] == [0, 2]
    assert attempts[0]["pid"] != attempts[1]["pid"]
    (result,) = list(outcome.results)
    assert result.error is None
    frame = result.metrics_dataframe
    after = [int(e) for e in frame[frame["resumed_from_epoch"] == 2]["epoch"]]
    before = [int(e) for e in frame[frame["resumed_from_epoch"] == 0]["epoch"]]
    assert after == [3]  # the restarted process trained epoch 3 only, not epochs 1-2 again
    assert before[0] == 1 and set(before) <= {1, 2}  # (Tune may drop the row reported just before the kill)
    assert result.metrics["epoch"] == 3 and result.metrics["resumed_from_epoch"] == 2


class InterruptAfter(tune.Callback):
    """Sends this process SIGUSR1 (Tune's "stop and save" signal, like Ctrl+C) after ``n`` trials finish."""

    def __init__(self, n: int):
        self.n, self.finished = n, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        if self.finished == self.n:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_interrupted_search_resumes_and_finishes_only_the_rest(local_ray, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       epochs=1, num_samples=4, max_concurrent=2)
    first = run_search(load_space(path), callbacks=[InterruptAfter(2)], verbose=0, out=io.StringIO())
    assert not first.complete
    done_first = {r.trial_id for r in first.leaderboard if r.status == "finished"}
    assert len(done_first) >= 2

    second = run_search(load_space(path), resume=True, verbose=0, out=io.StringIO())
    assert second.complete and len(second.leaderboard) == 4
    assert all(r.status == "finished" for r in second.leaderboard)
    starts = {r.trial_id: len(read_attempts(r.path)) for r in second.leaderboard}
    assert all(count >= 1 for count in starts.values())  # every trial logged its start, reused process or not
    for trial_id in done_first:
        assert starts[trial_id] == 1  # finished before the interruption: not trained again
    assert sum(starts.values()) <= 6  # at most the trials running at the interruption started twice
