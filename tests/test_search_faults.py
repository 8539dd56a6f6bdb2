"""MLflow history that stays true through refusals, Ctrl+C, resumes and a killed driver: real Ray,
real MLflow, the CLI as a user runs it.

Every sequence ends with the same checks (:func:`check_history`): one parent run per search, one
child run per trial, no run left RUNNING, each child's ``best_val_f2``/``best_epoch`` the best over
every epoch the trial reported (before and after a resume), and the uploaded best model that epoch's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from search_support import LR_AND_LOSS, tiny_dataset, write_space

from motorsearch.cli import main
from motorsearch.model_file import load_model_file
from motorsearch.objective import Objective
from motorsearch.tracking import schema

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_ray")]
PARAMETERS = LR_AND_LOSS


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("faults_data") / "sim")


def search_space(folder: Path, data: Path, *, name: str, epochs: int, num_samples: int) -> Path:
    return write_space(folder / "space.yaml", data=data, cache=folder / "cache", storage=folder / "runs",
                       epochs=epochs, name=name, num_samples=num_samples, max_concurrent=2, parameters=PARAMETERS,
                       tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


def runs_of(folder: Path, name: str) -> tuple[list, list]:
    """(parent runs, child runs) of experiment ``name``."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return ([r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_SEARCH],
            [r for r in runs if r.data.tags[schema.ROLE] == schema.ROLE_TRIAL])


def check_history(folder: Path, name: str, *, trials: int) -> None:
    """One finished parent, one finished child per trial, none RUNNING, and each child's objective the
    best of all its epochs, with the uploaded best model that epoch's."""
    parents, children = runs_of(folder, name)
    assert len(parents) == 1 and parents[0].data.tags[schema.STATUS] == schema.SEARCH_FINISHED
    assert parents[0].info.status == "FINISHED"
    assert len(children) == trials == len({c.data.tags[schema.TRIAL_ID] for c in children})
    assert all(c.data.tags[schema.PARENT] == parents[0].info.run_id for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    for child in children:
        history = [{"epoch": m.step, "val_f2": m.value} for m in client.get_metric_history(child.info.run_id, "val_f2")]
        expected = Objective().report(sorted(history, key=lambda h: h["epoch"]))  # best over every epoch
        assert child.data.metrics["best_val_f2"] == expected["best_val_f2"], (history, child.data.metrics)
        assert child.data.metrics["best_epoch"] == expected["best_epoch"]
        model = load_model_file(client.download_artifacts(child.info.run_id, schema.BEST_MODEL, str(folder / "dl")))
        assert model.metrics["epoch"] == expected["best_epoch"]


def run_cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "motorsearch", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_a_checkpoint(process: subprocess.Popen, folder: Path, name: str) -> None:
    deadline = time.monotonic() + 600  # generous: a loaded shared machine starts Ray slowly
    while not list((folder / "runs" / name).glob("trial_*/checkpoint_*")):  # a trial reported an epoch
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.5)


def test_refused_runs_leave_the_real_search_the_latest(data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    space = search_space(tmp_path, data, name="refused", epochs=2, num_samples=2)
    assert main(["run", str(space)]) == 0
    for refused in (["run", str(space)],  # the same name again
                    ["run", str(space), "--resume", "--name", "other"],  # nothing to resume
                    ["run", str(space), "--set", "optim.epochs=0"]):  # bad input
        assert main(refused) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "no search to resume" in err
    check_history(tmp_path, "refused", trials=2)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {e.name for e in client.search_experiments()} == {"refused", "Default"}  # "other" was never made
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["best", "--experiment", "refused", "--tracking-uri", uri]) == 0
    assert "(failed)" not in capsys.readouterr().out
    assert main(["export", "--experiment", "refused", "--out", str(tmp_path / "best.pt"), "--tracking-uri", uri]) == 0


def test_ctrl_c_then_a_refused_rerun_then_resume_leaves_one_parent_and_one_run_per_trial(data: Path,
                                                                                        tmp_path: Path) -> None:
    space = search_space(tmp_path, data, name="interrupted", epochs=4, num_samples=3)
    first = run_cli("run", str(space), cwd=tmp_path)
    wait_for_a_checkpoint(first, tmp_path, "interrupted")
    os.killpg(first.pid, signal.SIGINT)  # Ctrl+C in the terminal reaches the whole process group
    output = first.communicate(timeout=180)[0]
    assert first.returncode == 130, output
    table = output.split("leaderboard (")[1]
    assert " interrupted" in table and "stopped at epoch" not in output

    again = run_cli("run", str(space), cwd=tmp_path)  # forgot --resume: refused, and nothing logged
    output = again.communicate(timeout=180)[0]
    assert again.returncode == 2 and "already exists" in output, output
    parents, _ = runs_of(tmp_path, "interrupted")
    assert len(parents) == 1 and parents[0].data.tags[schema.STATUS] == schema.SEARCH_INTERRUPTED

    resumed = run_cli("run", str(space), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, output
    check_history(tmp_path, "interrupted", trials=3)


def test_a_killed_driver_is_marked_interrupted_by_the_next_command_and_resumes(data: Path, tmp_path: Path) -> None:
    space = search_space(tmp_path, data, name="killed", epochs=4, num_samples=2)
    first = run_cli("run", str(space), cwd=tmp_path)
    wait_for_a_checkpoint(first, tmp_path, "killed")
    time.sleep(2)  # let Tune save its experiment state once after the first report
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    os.killpg(first.pid, signal.SIGKILL)  # the local Ray it started, which has no driver now
    parents, children = runs_of(tmp_path, "killed")
    assert [p.info.status for p in parents] == ["RUNNING"] and "RUNNING" in {c.info.status for c in children}

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["best", "--experiment", "killed", "--tracking-uri", uri]) == 0
    parents, children = runs_of(tmp_path, "killed")
    assert [(p.info.status, p.data.tags[schema.STATUS]) for p in parents] == [("KILLED", schema.SEARCH_INTERRUPTED)]
    assert all(c.info.status != "RUNNING" for c in children)

    resumed = run_cli("run", str(space), "--resume", cwd=tmp_path)
    output = resumed.communicate(timeout=400)[0]
    assert resumed.returncode == 0, output
    check_history(tmp_path, "killed", trials=2)
