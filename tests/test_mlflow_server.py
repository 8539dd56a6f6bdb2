"""A real ``mlflow server`` on a free port: a search logs to it over HTTP, artifacts land in the
server's ``--artifacts-destination`` (never in a local ./mlruns or ./mlartifacts), the REST API
lists the runs, and ``export`` downloads through it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tracking_helpers import ensure_ray, run_tiny_search

from motorsearch.model_file import file_sha256
from motorsearch.tracking import schema
from motorsearch.tracking.export import export_best

STARTUP_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(uri, artifacts destination, server working folder) of a running ``mlflow server``."""
    root = tmp_path_factory.mktemp("mlflow-server")
    (root / "cwd").mkdir()
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=root / "cwd", stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _healthy(uri):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri, root / "artifacts", root / "cwd"
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker, by our own group id
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def searched(server, tmp_path_factory):
    """A 2-trial search (good: finished; short: early-stopped) logged over HTTP from a clean folder."""
    uri, _, _ = server
    folder = tmp_path_factory.mktemp("client")
    previous = Path.cwd()
    os.chdir(folder)  # any artifact written relative to the working folder would show up here
    ensure_ray()
    try:
        yield run_tiny_search(folder / "search", name="over-http", tracking_uri=uri, cases=("good", "short"))
    finally:
        os.chdir(previous)


def _post(uri: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _get(uri: str, endpoint: str) -> dict:
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/{endpoint}", timeout=10) as response:
        return json.loads(response.read())


def test_the_rest_api_lists_the_parent_and_the_trials(server, searched):
    uri = server[0]
    experiment = _get(uri, "experiments/get-by-name?experiment_name=over-http")["experiment"]
    runs = _post(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    assert sorted(t[schema.ROLE] for t in tags) == ["search", "trial", "trial"]
    children = [t for t in tags if t[schema.ROLE] == schema.ROLE_TRIAL]
    assert {t[schema.PARENT] for t in children} == {searched.parent_run_id}
    assert sorted(t[schema.STATUS] for t in children) == ["early_stopped", "finished"]
    metric_history = _get(uri, f"metrics/get-history?run_id={_run_of(runs, 'good')}&metric_key=val_f2")["metrics"]
    assert [(m["step"], m["value"]) for m in metric_history] == [(1, 0.3), (2, 0.8), (3, 0.6)]


def _run_of(runs: list[dict], case: str) -> str:
    for run in runs:
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        if params.get("case") == case:
            return run["info"]["run_id"]
    raise LookupError(case)


def test_artifacts_land_in_the_servers_destination_only(server, searched):
    _, destination, server_cwd = server
    files = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*") if p.is_file())
    assert sum(f.endswith("checkpoints/best/model.pt") for f in files) == 2
    assert sum(f.endswith("checkpoints/last/model.pt") for f in files) == 2
    assert sum(f.endswith("pictures/validation.png") for f in files) == 2
    assert sum(f.endswith("leaderboard.csv") for f in files) == 1
    for folder in (searched.folder.parent, searched.folder, server_cwd):
        assert not (folder / "mlruns").exists() and not (folder / "mlartifacts").exists()


def test_export_downloads_through_the_server(server, searched, tmp_path):
    result = export_best(tmp_path / "best.pt", experiment_name="over-http", tracking_uri=server[0])
    assert result.pick.value == pytest.approx(0.8)
    stored = next(server[1].rglob(f"{result.pick.run_id}/artifacts/checkpoints/best/model.pt"))
    assert file_sha256(tmp_path / "best.pt") == file_sha256(stored)
