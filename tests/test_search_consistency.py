"""One objective everywhere, no trial lost or left running: real Ray, real Optuna storage, real MLflow.

Every search here goes through ``tracked_search`` (what ``run`` does) on the tiny dataset, then
reads the same trials back through each view a user has — Tune's leaderboard, the Optuna study,
MLflow's runs, ``best``'s table and ``export``'s pick — and checks they agree trial by trial.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from search_support import LR_AND_LOSS, tiny_dataset, write_space

from motorsearch.cli.run import tracked_search
from motorsearch.model_file import load_model_file
from motorsearch.search.runner import format_leaderboard
from motorsearch.search.space import SearchSpace
from motorsearch.search.space_file import load_space
from motorsearch.search.study import MLFLOW_RUN_ID, RAY_TRIAL_ID, study_url
from motorsearch.search.trainable import FAULT_RAISE_ENV
from motorsearch.tracking import schema
from motorsearch.tracking.export import pick_trial
from motorsearch.tracking.leaderboard import find_search, leaderboard

REPO = Path(__file__).resolve().parents[1]
State = optuna.trial.TrialState
pytestmark = pytest.mark.usefixtures("ray_for_the_module")
OPTUNA_STATE = {schema.FINISHED: State.COMPLETE, schema.EARLY_STOPPED: State.PRUNED, schema.ERRORED: State.FAIL}
PARAMETERS = LR_AND_LOSS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("consistency_data") / "sim")


def asha_space(folder: Path, data: Path, *, name: str, max_concurrent: int, seed: int) -> Path:
    """6 trials of 3 epochs; ASHA (a rung at epoch 1 that keeps the best third) decides on
    ``val_loss``, which unlike F2 on six tomograms does not tie. A trial continues only when it is in
    the top third so far; that all five after the first do is about a 1-in-100 order."""
    return write_space(folder / "space.yaml", data=data, cache=folder / "cache", storage=folder / "runs",
                       epochs=3, name=name, num_samples=6, max_concurrent=max_concurrent, parameters=PARAMETERS,
                       metric="val_loss", mode="min",
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 3},
                       searcher={"sampler": "tpe", "seed": seed, "n_startup_trials": 2},
                       tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def check_views_agree(space: SearchSpace, outcome) -> dict[str, optuna.trial.FrozenTrial]:
    """Tune's leaderboard, the Optuna study, MLflow, ``best`` and ``export`` tell the same story."""
    objective = space.objective
    study = optuna.load_study(study_name=space.name, storage=study_url(space))
    by_ray_id = {t.user_attrs[RAY_TRIAL_ID]: t for t in study.trials}
    client = MlflowClient(space.tracking_uri)
    search = find_search(client, space.name)
    children = {run.data.tags[schema.TRIAL_ID]: run for run in client.search_runs(
        [search.info.experiment_id], filter_string=f"tags.`{schema.PARENT}` = '{search.info.run_id}'")}

    rows = outcome.leaderboard
    assert len(rows) == len(by_ray_id) == len(children) == len(study.trials)  # one of each per trial
    assert not [t for t in study.trials if t.state in (State.RUNNING, State.WAITING)]
    for row in rows:
        trial, run = by_ray_id[row.trial_id], children[row.trial_id]
        assert trial.state == OPTUNA_STATE[row.status], row
        assert run.data.tags[schema.STATUS] == row.status
        assert trial.user_attrs[MLFLOW_RUN_ID] == run.info.run_id
        assert {k: v for k, v in trial.params.items()} == row.params  # its own parameters
        if row.status == schema.ERRORED:
            assert trial.value is None
            continue
        assert trial.value == row.value == run.data.metrics[objective.value_key]
        assert run.data.metrics[objective.epoch_key] == row.epoch
        assert sorted(trial.intermediate_values) == list(range(1, row.epochs_run + 1))  # the last epoch included
        assert trial.intermediate_values[row.epochs_run] == row.value

    table = leaderboard(client, search)  # what `best` prints
    pick = pick_trial(client, experiment_name=space.name)  # what `export` writes
    assert outcome.best.trial_id == pick.trial_id == table["trial_id"].iloc[0] == rows[0].trial_id
    assert study.best_trial.user_attrs[RAY_TRIAL_ID] == pick.trial_id
    assert pick.value == study.best_value == outcome.best.value
    # the model MLflow holds for the pick is the objective epoch's
    downloaded = client.download_artifacts(pick.run_id, schema.BEST_MODEL, tempfile.mkdtemp(dir=space.experiment_path))
    model = load_model_file(downloaded)
    assert model.metrics["epoch"] == outcome.best.epoch
    if objective.kind == "best":
        assert model.metrics[objective.metric] == pick.value
    return by_ray_id


@pytest.mark.slow
@pytest.mark.parametrize(("max_concurrent", "seed"), [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_asha_searches_lose_no_trial_and_every_view_agrees(data: Path, tmp_path: Path, max_concurrent: int,
                                                          seed: int) -> None:
    space = load_space(asha_space(tmp_path, data, name=f"asha{max_concurrent}_{seed}",
                                  max_concurrent=max_concurrent, seed=seed))
    outcome, _ = tracked_search(space, space_file=space.source, out=io.StringIO())
    assert outcome.complete and len(outcome.leaderboard) == 6
    statuses = [row.status for row in outcome.leaderboard]
    assert schema.ERRORED not in statuses  # no "Could not re-use actor" casualties
    assert schema.FINISHED in statuses and schema.EARLY_STOPPED in statuses  # ASHA did stop trials
    trials = check_views_agree(space, outcome)
    assert {t.state for t in trials.values()} == {State.COMPLETE, State.PRUNED}


@pytest.mark.slow
def test_a_trial_that_raises_is_failed_errored_and_keeps_its_own_row(data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       name="raises", num_samples=2, parameters=PARAMETERS, tracking_uri=f"sqlite:///{tmp_path}/m.db")
    space = load_space(path)
    monkeypatch.setenv(FAULT_RAISE_ENV, "optim.lr=0.003")  # raises after reporting epoch 1 of 2
    points = [{"optim.lr": 0.003, "loss.name": "focal"}, {"optim.lr": 0.001, "loss.name": "weighted_bce"}]
    outcome, search = tracked_search(space, space_file=path, points_to_evaluate=points, out=io.StringIO())
    assert outcome.complete
    errored = [row for row in outcome.leaderboard if row.status == schema.ERRORED]
    assert len(errored) == 1 and errored[0].params == points[0] and errored[0] is outcome.leaderboard[-1]
    assert outcome.best.params == points[1] and outcome.best.status == schema.FINISHED
    printed = format_leaderboard(outcome.leaderboard, metric="best_val_f2")
    assert f"best model file: {outcome.best.checkpoint}/model.pt" in printed and errored[0].trial_id not in printed.split(
        "best checkpoint")[1]
    trials = check_views_agree(space, outcome)
    assert trials[errored[0].trial_id].state == State.FAIL
    run = MlflowClient(space.tracking_uri).search_runs(
        [search.experiment_id], filter_string=f"tags.`{schema.TRIAL_ID}` = '{errored[0].trial_id}'")[0]
    assert run.info.status == "FAILED" and "injected fault: optim.lr=0.003" in run.data.tags["motorsearch.error"]


def run_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "motorsearch", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_ctrl_c_then_resume_leaves_no_trial_running_and_one_run_per_trial(data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       epochs=4, name="interrupted", num_samples=3, max_concurrent=2, parameters=PARAMETERS,
                       tracking_uri=f"sqlite:///{tmp_path}/m.db")
    space = load_space(path)
    first = run_cli(str(path), cwd=tmp_path)
    deadline = time.monotonic() + 180
    while not list(Path(space.experiment_path).glob("trial_*/checkpoint_*")):  # a trial reported an epoch
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl+C in the terminal reaches the whole process group
    output = first.communicate(timeout=120)[0]
    assert "continue it with: python -m motorsearch run" in output, output

    study = optuna.load_study(study_name=space.name, storage=study_url(space))
    assert study.trials and not [t for t in study.trials if t.state == State.RUNNING]
    waiting = {t.user_attrs[RAY_TRIAL_ID] for t in study.trials if t.state == State.WAITING}
    assert waiting  # the interrupted ones wait for --resume

    second = run_cli(str(path), "--resume", cwd=tmp_path)
    output = second.communicate(timeout=300)[0]
    assert second.returncode == 0, output
    study = optuna.load_study(study_name=space.name, storage=study_url(space))
    assert len(study.trials) == 3 and {t.state for t in study.trials} == {State.COMPLETE}
    assert waiting <= {t.user_attrs[RAY_TRIAL_ID] for t in study.trials}  # continued, not duplicated

    client = MlflowClient(space.tracking_uri)
    experiment = client.get_experiment_by_name(space.name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_TRIAL]
    assert len(parents) == 1 and parents[0].data.tags[schema.STATUS] == schema.SEARCH_FINISHED
    assert sorted(r.data.tags[schema.TRIAL_ID] for r in children) == sorted(
        t.user_attrs[RAY_TRIAL_ID] for t in study.trials)
    assert all(r.info.status == "FINISHED" for r in runs)
    for run in children:
        trial = next(t for t in study.trials if t.user_attrs[RAY_TRIAL_ID] == run.data.tags[schema.TRIAL_ID])
        assert run.data.metrics["best_val_f2"] == trial.value
        assert trial.user_attrs[MLFLOW_RUN_ID] == run.info.run_id


@pytest.mark.slow
def test_a_tie_between_epochs_is_the_later_epoch_everywhere(data: Path, tmp_path: Path) -> None:
    """A constant learning rate makes every epoch tie on ``lr``: the trainer's best checkpoint, the one
    Tune keeps, MLflow's ``best_epoch``, the uploaded best model and ``export`` all name the last epoch."""
    space = load_space(write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache",
                                   storage=tmp_path / "runs", epochs=3, name="tie", metric="lr", mode="max",
                                   overrides={"optim.min_lr_fraction": 1.0, "optim.warmup_fraction": 0.0},
                                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    outcome, _ = tracked_search(space, space_file=space.source, out=io.StringIO())
    assert [row.status for row in outcome.leaderboard] == [schema.FINISHED, schema.FINISHED]
    assert [row.epoch for row in outcome.leaderboard] == [3, 3]  # Tune's kept checkpoint: the later epoch
    assert all(row.checkpoint and row.checkpoint.endswith("checkpoint_000002") for row in outcome.leaderboard)
    check_views_agree(space, outcome)  # MLflow best_epoch, the uploaded model, best and export agree
    client = MlflowClient(space.tracking_uri)
    search = find_search(client, space.name)
    for run in client.search_runs([search.info.experiment_id],
                                  filter_string=f"tags.`{schema.PARENT}` = '{search.info.run_id}'"):
        assert run.data.metrics["best_epoch"] == 3
    out = tmp_path / "best.pt"
    from motorsearch.tracking.export import export_best

    exported = export_best(out, experiment_name=space.name, tracking_uri=space.tracking_uri)
    assert load_model_file(exported.path).metrics["epoch"] == 3
