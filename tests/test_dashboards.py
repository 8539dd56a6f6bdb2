"""The commands and URLs a finished search prints, run as a user would run them.

One tiny search through ``python -m motorsearch run``; then the printed ``mlflow ui`` command and
``optuna-dashboard`` command are started (on free ports) and asked over HTTP what a user would see:
the MLflow REST API lists the search and its trials, the dashboard's API the study's best trial.
The browser test opens the printed runs-table URL and the dashboard in headless Chromium
(Debian's package, driven by Playwright); it skips when neither is installed.
``MOTORSEARCH_SCREENSHOTS=DIR`` keeps its screenshots in DIR (docs/ has the committed ones).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from search_support import tiny_dataset, write_space

from motorsearch.cli import main
from motorsearch.tracking import schema

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Finished:
    folder: Path
    out: str  # what `run` printed
    uri: str
    best_run_id: str
    best_value: float

    def printed(self, label: str) -> str:
        """The text after ``label`` on the line of the output that has it."""
        match = re.search(rf"^\s*{re.escape(label)}\s*(.+)$", self.out, re.MULTILINE)
        assert match, f"`run` printed no line with {label!r}:\n{self.out}"
        return match.group(1).strip()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Finished]:
    import ray

    folder = tmp_path_factory.mktemp("dashboards")
    data = tiny_dataset(folder / "sim")
    space = write_space(folder / "space.yaml", data=data, cache=folder / "cache", storage=folder / "runs",
                        name="tiny_ui", epochs=1, parameters={
                            "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
                            "loss.name": {"type": "categorical", "choices": ["focal", "weighted_bce"]}})
    uri = f"sqlite:///{folder}/mlflow.db"
    before = Path.cwd()
    os.chdir(folder)
    try:
        from contextlib import redirect_stdout
        from io import StringIO

        buffer = StringIO()
        with redirect_stdout(buffer):
            assert main(["run", str(space), "--tracking-uri", uri]) == 0
    finally:
        os.chdir(before)
        ray.shutdown()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_ui")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{schema.ROLE}` = 'search'")
    best = client.get_run(parent.data.tags[schema.BEST_RUN])
    yield Finished(folder=folder, out=buffer.getvalue(), uri=uri, best_run_id=best.info.run_id,
                   best_value=best.data.metrics["best_val_f2"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_port(url: str, port: int) -> str:
    return re.sub(r"^(https?://127\.0\.0\.1):\d+", rf"\g<1>:{port}", url)


def get_json(url: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """``serve(command, port, ready_path)``: start a printed command on ``port``, wait until it answers."""
    started: list[subprocess.Popen] = []

    def start(command: str, port: int, ready_path: str, timeout_s: float = 90.0) -> str:
        argv = shlex.split(command)
        argv += ["--port", str(port)]  # the last --port wins: the printed one may be taken on this machine
        log = (tmp_path / f"server-{port}.log").open("w")
        process = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / f"server-{port}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(base + ready_path, timeout=2):
                    return base
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{command} did not answer within {timeout_s} s")

    yield start
    for process in started:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_the_printed_commands_serve_the_search(finished: Finished, serve) -> None:
    # mlflow: the printed `mlflow ui` command, then the REST API behind the printed runs-table URL
    command = finished.printed("serve it:")
    assert f"--backend-store-uri {finished.uri}" in command
    mlflow = serve(command, free_port(), "/health")
    runs_url = with_port(finished.printed("runs table:"), int(mlflow.rsplit(":", 1)[1]))
    experiment_id = re.search(r"#/experiments/(\d+)/runs\?viewStateShareKey=", runs_url).group(1)
    found = get_json(f"{mlflow}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    tags_of = {run["info"]["run_id"]: {t["key"]: t["value"] for t in run["data"]["tags"]} for run in found}
    searches = [run_id for run_id, tags in tags_of.items() if tags[schema.ROLE] == schema.ROLE_SEARCH]
    trials = [tags for tags in tags_of.values() if tags[schema.ROLE] == schema.ROLE_TRIAL]
    assert len(searches) == 1 and len(trials) == 2
    assert all(tags[schema.PARENT] == searches[0] for tags in trials)
    experiment = get_json(f"{mlflow}/api/2.0/mlflow/experiments/get?experiment_id={experiment_id}")["experiment"]
    experiment_tags = {t["key"]: t["value"] for t in experiment["tags"]}
    assert experiment_tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING
    view = json.loads(experiment_tags[schema.SHARED_VIEW_PREFIX + schema.RUNS_VIEW])
    assert "metrics.`best_val_f2`" in view["selectedColumns"] and "params.`optim.lr`" in view["selectedColumns"]

    # optuna-dashboard: the printed command; its API knows the same best trial
    if shutil.which(shlex.split(finished.printed("optuna study:"))[0]) is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dashboards]')")
    dashboard = serve(finished.printed("optuna study:").split("   (then open")[0], free_port(), "/api/studies")
    (study,) = get_json(f"{dashboard}/api/studies")["study_summaries"]
    assert study["study_name"] == "tiny_ui"
    (best,) = get_json(f"{dashboard}/api/studies/{study['study_id']}")["best_trials"]
    assert best["values"] == [pytest.approx(finished.best_value)]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_the_runs_table_and_the_dashboard_in_a_browser(finished: Finished, serve, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    dashboard_command = finished.printed("optuna study:").split("   (then open")[0]
    if shutil.which(shlex.split(dashboard_command)[0]) is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dashboards]')")
    mlflow = serve(finished.printed("serve it:"), free_port(), "/health")
    dashboard = serve(dashboard_command, free_port(), "/api/studies")
    shots = Path(os.environ.get("MOTORSEARCH_SCREENSHOTS") or tmp_path)
    client = MlflowClient(finished.uri)
    best_name = client.get_run(finished.best_run_id).info.run_name
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 700})
            # MLflow: the printed URL opens the model-training runs table with the objective's column
            page.goto(with_port(finished.printed("runs table:"), int(mlflow.rsplit(":", 1)[1])))
            search_row = page.locator("[role=row]", has_text="tiny_ui search").first
            search_row.wait_for(timeout=60_000)
            page.get_by_role("columnheader", name="best_val_f2").first.wait_for(timeout=10_000)
            assert page.get_by_text("Traces", exact=True).count() == 0 or page.get_by_text("Training runs").count()
            # the trials are nested under the search: hidden until its row is expanded
            assert page.locator("[role=row]", has_text=best_name).count() == 0
            search_row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
            page.locator("[role=row]", has_text=best_name).first.wait_for(timeout=10_000)
            assert page.locator("[role=row]", has_text="tiny_ui #").count() == 2
            # ag-grid draws a row in parts (pinned name, scrolled values) that share its row-index
            index = page.locator("[role=row]", has_text=best_name).first.get_attribute("row-index")
            best_row = " ".join(page.locator(f"[role=row][row-index='{index}']").all_inner_texts())
            assert f"{finished.best_value:.4g}"[:4] in best_row  # best_val_f2 in the trial's row
            page.screenshot(path=str(shots / "mlflow-runs.png"))
            # optuna-dashboard: the same best trial and value
            page.goto(f"{dashboard}/dashboard/studies/1")
            best_card = page.get_by_text(re.compile(r"Best Trial \(number=\d+\)")).first
            best_card.wait_for(timeout=30_000)
            # the same best trial; on a tie of values Optuna shows the lower number, so compare values
            number = int(re.search(r"number=(\d+)", best_card.inner_text()).group(1))
            trials = {int(run.data.tags[schema.OPTUNA_TRIAL]): run.data.metrics["best_val_f2"] for run in
                      client.search_runs([client.get_run(finished.best_run_id).info.experiment_id],
                                         filter_string=f"tags.`{schema.ROLE}` = 'trial'")}
            assert trials[number] == pytest.approx(finished.best_value)
            assert page.get_by_text(str(finished.best_value)[:6]).count() > 0
            page.screenshot(path=str(shots / "optuna-dashboard.png"))
        finally:
            browser.close()
