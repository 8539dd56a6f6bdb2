"""The Optuna study mirrors the trials: objective values, intermediate values, states, links.

The searcher is driven here the way Tune drives it (suggest, results, complete) over a real
SQLite study; the end-to-end searches in test_search_consistency.py run it inside Ray.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from search_support import write_space

from motorsearch.search.space_file import load_space
from motorsearch.search.study import (
    ENDED_NOTE,
    MLFLOW_RUN_ID,
    RAY_TRIAL_ID,
    link_run,
    make_searcher,
    reopen_waiting,
    settle_study,
)

State = optuna.trial.TrialState


@pytest.fixture
def searcher_and_url(tmp_path: Path):
    path = write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       epochs=3)
    url = f"sqlite:///{tmp_path}/study.db"
    return make_searcher(load_space(path), url, None), url


def results(*values: float) -> list[dict[str, float]]:
    """What a trial reports for per-epoch ``val_f2`` values: the metric and the objective so far."""
    reports, best = [], None
    for epoch, value in enumerate(values, start=1):
        if best is None or value >= best[0]:
            best = (value, epoch)
        reports.append({"epoch": epoch, "training_iteration": epoch, "val_f2": value, "best_val_f2": best[0],
                        "best_epoch": float(best[1])})
    return reports


def drive(searcher, trial_id: str, reports: list[dict], *, error: bool = False) -> None:
    searcher.suggest(trial_id)
    for report in reports[:-1]:
        searcher.on_trial_result(trial_id, report)
    searcher.on_trial_complete(trial_id, reports[-1] if reports else None, error=error)  # as Tune does


def test_states_values_and_intermediate_values_mirror_the_trials(searcher_and_url) -> None:
    searcher, url = searcher_and_url
    drive(searcher, "full", results(0.3, 0.9, 0.6))  # all 3 epochs
    drive(searcher, "stopped", results(0.5))  # stopped by ASHA after 1 of 3
    drive(searcher, "crashed", results(0.7, 0.8)[:1], error=True)
    study = optuna.load_study(study_name="tiny", storage=url)
    by_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in study.trials}
    full, stopped, crashed = by_id["full"], by_id["stopped"], by_id["crashed"]
    assert (full.state, full.value, full.intermediate_values) == (State.COMPLETE, 0.9, {1: 0.3, 2: 0.9, 3: 0.9})
    assert (stopped.state, stopped.value, stopped.intermediate_values) == (State.PRUNED, 0.5, {1: 0.5})
    assert (crashed.state, crashed.value) == (State.FAIL, None)
    assert study.metric_names == ["best_val_f2"]
    assert study.best_trial.number == full.number


def test_a_trial_stopped_before_any_validation_fails_with_a_note(searcher_and_url) -> None:
    searcher, url = searcher_and_url
    searcher.suggest("pending")
    searcher.on_trial_complete("pending")  # Tune stops a PENDING trial (the epoch budget) with no result
    (trial,) = optuna.load_study(study_name="tiny", storage=url).trials
    assert trial.state == State.FAIL and trial.user_attrs[ENDED_NOTE] == "stopped before its first validation epoch"


def test_settle_interrupted_trials_wait_and_resume_takes_them_back(searcher_and_url) -> None:
    searcher, url = searcher_and_url
    drive(searcher, "done", results(0.4, 0.5, 0.6))
    searcher.suggest("running")
    searcher.on_trial_result("running", results(0.2)[0])
    searcher.suggest("errored")
    settle_study(url, "tiny", search_ended=False, errored={"errored"})
    study = optuna.load_study(study_name="tiny", storage=url)
    states = {t.user_attrs[RAY_TRIAL_ID]: t.state for t in study.trials}
    assert states == {"done": State.COMPLETE, "running": State.WAITING, "errored": State.FAIL}
    study.enqueue_trial({"optim.lr": 1e-3})  # a warm-start point stays queued for a new trial
    assert reopen_waiting(url, "tiny") == 1
    searcher.on_trial_complete("running", results(0.2, 0.3, 0.1)[-1])  # the resumed trial ends
    study = optuna.load_study(study_name="tiny", storage=url)
    states = [t.state for t in study.trials]
    assert states == [State.COMPLETE, State.COMPLETE, State.FAIL, State.WAITING]
    assert study.trials[1].value == 0.3 and study.trials[1].intermediate_values == {1: 0.2, 3: 0.3}


def test_settle_a_finished_search_fails_trials_that_never_trained(searcher_and_url) -> None:
    searcher, url = searcher_and_url
    searcher.suggest("never")
    settle_study(url, "tiny", search_ended=True)
    (trial,) = optuna.load_study(study_name="tiny", storage=url).trials
    assert trial.state == State.FAIL and trial.user_attrs[ENDED_NOTE] == "the search ended before this trial trained"


def test_link_run_records_the_mlflow_run_on_the_running_trial(searcher_and_url, tmp_path: Path) -> None:
    searcher, url = searcher_and_url
    searcher.suggest("a")
    searcher.suggest("b")
    assert link_run(url, "tiny", "b", "run-b") == 1 and link_run(url, "tiny", "zz", "run-z") is None  # trial numbers
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.user_attrs.get(MLFLOW_RUN_ID) for t in study.trials] == [None, "run-b"]
    assert link_run(f"sqlite:///{tmp_path}/missing.db", "tiny", "b", "x") is None
    assert not (tmp_path / "missing.db").exists()
