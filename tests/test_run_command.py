"""`python -m motorsearch run` end to end through the CLI: Ray search, MLflow runs, export, predict."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from search_support import tiny_dataset, write_space

from motorsearch.cli import main
from motorsearch.model_file import load_model_file
from motorsearch.tracking import schema

pytestmark = pytest.mark.usefixtures("no_leftover_ray")

def test_run_logs_to_mlflow_then_export_and_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset(tmp_path / "sim")
    space = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                        name="cli_e2e")
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    assert main(["run", str(space), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "leaderboard (best_val_f2, max; finished trials first) of 2 trials" in out and "mlflow: experiment 'cli_e2e'" in out

    # Tune's result files, without a TensorBoard logger or its hint for a tool the project does not install
    assert "tensorboard" not in out.lower() and not list((tmp_path / "runs").rglob("events.out.tfevents*"))
    assert len(list((tmp_path / "runs").rglob("progress.csv"))) == len(list((tmp_path / "runs").rglob("result.json"))) == 2

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cli_e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    children = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_TRIAL]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags[schema.PARENT] == parents[0].info.run_id for c in children)
    assert all("optim.lr" in c.data.params for c in children)
    history = client.get_metric_history(children[0].info.run_id, "val_f2")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(children[0].info.run_id, "checkpoints/best")}
    assert "checkpoints/best/model.pt" in artifacts

    best = tmp_path / "best.pt"
    assert main(["export", "--experiment", "cli_e2e", "--out", str(best), "--tracking-uri", uri]) == 0
    assert best.is_file() and Path(f"{best}.sha256").is_file()
    ranked = client.search_runs([experiment.experiment_id], filter_string=f"tags.{schema.ROLE} = 'trial'",
                                order_by=schema.order_by("best_val_f2", "best_epoch", "max"))
    exported = load_model_file(best)
    top = load_model_file(Path(client.download_artifacts(ranked[0].info.run_id, schema.BEST_MODEL,
                                                         str(tmp_path / "dl"))))
    assert exported.metrics == top.metrics
    assert all(torch.equal(a, b) for a, b in zip(exported.model.state_dict().values(),
                                                 top.model.state_dict().values(), strict=True))

    submission = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(best), "--data", str(data / "train"), "--out", str(submission)]) == 0
    with submission.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and list(rows[0]) == ["tomo_id", "Motor axis 0", "Motor axis 1", "Motor axis 2"]


def test_run_fails_fast_on_an_unreachable_tracking_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "no_data_needed"
    space = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs")
    assert main(["run", str(space), "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "127.0.0.1:9" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_run_ends_on_its_epoch_budget_not_as_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    data = tiny_dataset(tmp_path / "sim")
    space = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                        name="budgeted", num_samples=50)  # 2 epochs per trial: the budget, not the 50, ends it

    assert main(["run", str(space), "--budget-epochs", "3", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    out = capsys.readouterr().out
    assert "the epoch budget is spent:" in out and "(budget 3)" in out
    assert "interrupted" not in out
    trials = int(out.split("leaderboard (best_val_f2, max; finished trials first) of ")[1].split(" trials")[0])
    assert 2 <= trials <= 3  # 3 trial-epochs at 2 per trial, 2 trials at a time
