"""The runs of a search whose driver died are marked interrupted; those of a live or remote driver are
left alone; a search refused after its parent run opened leaves no run. Real MLflow (SQLite)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from motorsearch.errors import InputError
from motorsearch.objective import Objective
from motorsearch.tracking import schema
from motorsearch.tracking.drivers import driver_is_dead, settle_dead_searches, this_driver
from motorsearch.tracking.search_runs import SearchRun


def dead_driver() -> str:
    """The driver tag of a process that has ended."""
    child = subprocess.run([sys.executable, "-c", "from motorsearch.tracking.drivers import this_driver; "
                                                  "print(this_driver())"], capture_output=True, text=True, check=True)
    return child.stdout.strip()


def test_a_driver_is_dead_only_when_it_ran_here_and_is_gone() -> None:
    assert not driver_is_dead(this_driver())
    assert driver_is_dead(dead_driver())
    host, pid, start = this_driver().split(":")
    assert driver_is_dead(f"{host}:{pid}:{int(start) + 1}")  # the same pid, another process (recycled)
    assert not driver_is_dead(f"not-{socket.gethostname()}:1:1")  # another machine: nobody here can tell
    assert not driver_is_dead("")  # a search from before the tag existed


def make_search(client: MlflowClient, experiment_id: str, driver: str, *, children: int) -> str:
    parent = client.create_run(experiment_id, tags={schema.ROLE: schema.ROLE_SEARCH, schema.DRIVER: driver,
                                                    schema.STATUS: schema.SEARCH_RUNNING}).info.run_id
    for _ in range(children):
        client.create_run(experiment_id, tags={schema.ROLE: schema.ROLE_TRIAL, schema.PARENT: parent,
                                               schema.STATUS: schema.TRIAL_RUNNING})
    return parent


def test_settle_marks_only_the_dead_drivers_runs(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("search")
    dead = make_search(client, experiment_id, dead_driver(), children=2)
    alive = make_search(client, experiment_id, this_driver(), children=1)
    remote = make_search(client, experiment_id, "elsewhere:12:34", children=1)

    assert settle_dead_searches(client, experiment_id) == [dead]
    for run in client.search_runs([experiment_id]):
        parent = run.data.tags.get(schema.PARENT, run.info.run_id)
        if parent == dead:
            assert run.info.status == "KILLED"
            assert run.data.tags[schema.STATUS] in (schema.SEARCH_INTERRUPTED, schema.INTERRUPTED)
        else:
            assert parent in (alive, remote) and run.info.status == "RUNNING"
    assert settle_dead_searches(client, experiment_id) == []  # once is enough


def test_a_search_refused_after_its_parent_opened_leaves_no_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(InputError), SearchRun.start(name="refused", objective=Objective(), tracking_uri=uri):
        raise InputError("refused after the parent run opened")
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("refused").lifecycle_stage == "deleted"
    assert client.search_runs([client.get_experiment_by_name("refused").experiment_id]) == []

    with SearchRun.start(name="kept", objective=Objective(), tracking_uri=uri) as search:  # a search that ran
        client.create_run(search.experiment_id, tags={schema.PARENT: search.run_id, schema.ROLE: schema.ROLE_TRIAL})
    with pytest.raises(InputError), SearchRun.start(name="kept", objective=Objective(), tracking_uri=uri,
                                                    resume=True):
        raise InputError("a resume refused late")
    (parent,) = client.search_runs([search.experiment_id], filter_string=f"tags.`{schema.ROLE}` = 'search'")
    assert parent.info.run_id == search.run_id  # still there, resumable: not failed, not deleted
    assert parent.data.tags[schema.STATUS] == schema.SEARCH_INTERRUPTED
