"""MLflow tracking of a real (tiny) Ray Tune search: runs, tags, metrics, artifacts, leaderboard.

The search and its hand-worked expectations are described in ``tracking_helpers``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tracking_helpers import CASES, EPOCHS, checkpoint_model_file, trial_runs_by_case

from motorsearch.cli import main
from motorsearch.errors import InputError
from motorsearch.model_file import file_sha256, verify_checksum
from motorsearch.objective import Objective
from motorsearch.tracking import schema
from motorsearch.tracking.leaderboard import find_search, leaderboard, top_configs, tracking_client
from motorsearch.tracking.pictures import _curves, training_curves_png
from motorsearch.tracking.uri import resolve_tracking_uri

EXPECTED = {  # case: (status, best val_f2, best epoch, last epoch)
    "good": (schema.FINISHED, 0.8, 2, 3),
    "tie": (schema.FINISHED, 0.8, 3, 3),
    "short": (schema.EARLY_STOPPED, 0.9, 1, 1),
    "crash": (schema.ERRORED, 0.95, 1, 1),
}


@pytest.fixture(scope="module")
def children(search, client):
    """case -> child Run."""
    return trial_runs_by_case(search, client)


def test_one_parent_run_and_one_nested_child_per_trial(search, client, children):
    experiment = client.get_experiment_by_name(search.name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(schema.ROLE) == schema.ROLE_SEARCH]
    assert [p.info.run_id for p in parents] == [search.parent_run_id]
    assert len(runs) == 1 + len(CASES)
    assert sorted(children) == sorted(CASES)
    assert all(r.data.tags[schema.PARENT] == search.parent_run_id for r in children.values())
    assert all(r.data.tags[schema.ROLE] == schema.ROLE_TRIAL for r in children.values())
    trial_ids = {r.data.tags[schema.TRIAL_ID] for r in children.values()}
    assert trial_ids == {result.metrics["trial_id"] for result in search.results}


@pytest.mark.parametrize("case", sorted(CASES))
def test_params_are_the_sampled_values_with_their_types(children, case):
    run = children[case]
    assert run.data.params == {"case": case, "lr": repr(CASES[case]["lr"])}
    assert json.loads(run.data.tags[schema.PARAMS_JSON]) == {"case": case, "lr": CASES[case]["lr"]}


@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_are_logged_each_epoch_with_step_epoch(client, children, case):
    run_id = children[case].info.run_id
    scripted = [v for v in CASES[case]["values"] if v is not None]
    history = client.get_metric_history(run_id, "val_f2")
    assert [(p.step, p.value) for p in history] == list(enumerate(scripted, start=1))
    losses = client.get_metric_history(run_id, "train_loss")
    assert [(p.step, p.value) for p in losses] == [(e, 1.0 / e) for e in range(1, len(scripted) + 1)]
    assert "timestamp" not in children[case].data.metrics and "training_iteration" not in children[case].data.metrics


@pytest.mark.parametrize("case", sorted(CASES))
def test_status_and_summary_follow_the_rule(children, case):
    status, best, best_epoch, last_epoch = EXPECTED[case]
    run = children[case]
    assert run.data.tags[schema.STATUS] == status
    assert run.info.status == ("FAILED" if status == schema.ERRORED else "FINISHED")
    assert run.data.metrics["best_val_f2"] == pytest.approx(best)
    assert run.data.metrics["best_epoch"] == best_epoch
    assert run.data.metrics[schema.LAST_EPOCH] == last_epoch
    if status == schema.ERRORED:
        assert "scripted crash" in run.data.tags["motorsearch.error"]


def test_trial_artifacts_best_and_last_model_files_curves_and_validation_picture(search, client, children, tmp_path):
    run_id = children["good"].info.run_id
    files = {a.path for folder in ("", "checkpoints/best", "checkpoints/last", "pictures")
             for a in client.list_artifacts(run_id, folder or None) if not a.is_dir}
    assert files == {schema.CONFIG_ARTIFACT, schema.BEST_MODEL, schema.BEST_MODEL + ".sha256", schema.LAST_MODEL,
                     schema.LAST_MODEL + ".sha256", schema.CURVES_PNG, schema.VALIDATION_PNG}
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/best", "checkpoints/last"}

    best = Path(client.download_artifacts(run_id, "checkpoints/best", str(tmp_path / "best"))) / "model.pt"
    last = Path(client.download_artifacts(run_id, "checkpoints/last", str(tmp_path / "last"))) / "model.pt"
    assert verify_checksum(best) and verify_checksum(last)
    # the best is epoch 2's checkpoint, the last epoch 3's, byte for byte as Ray stored them
    assert file_sha256(best) == file_sha256(checkpoint_model_file(search, "good", 2))
    assert file_sha256(last) == file_sha256(checkpoint_model_file(search, "good", 3))
    assert children["good"].data.tags[schema.BEST_MODEL_SHA256] == file_sha256(best)

    config = client.download_artifacts(run_id, schema.CONFIG_ARTIFACT, str(tmp_path))
    assert "optim:\n  epochs: 3" in Path(config).read_text()
    for picture in (schema.CURVES_PNG, schema.VALIDATION_PNG):
        path = client.download_artifacts(run_id, picture, str(tmp_path / "pictures"))
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_an_errored_trial_still_keeps_its_last_checkpoint(client, children):
    run_id = children["crash"].info.run_id
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints/best")} == {
        schema.BEST_MODEL, schema.BEST_MODEL + ".sha256"}


def test_parent_run_tags(search, client, children):
    parent = client.get_run(search.parent_run_id)
    tags = parent.data.tags
    assert tags[schema.SPACE_FILE] == str(search.space_file.resolve())
    assert tags[schema.SPACE_SHA256] == hashlib.sha256(search.space_file.read_bytes()).hexdigest()
    assert tags[schema.CODE_VERSION] == __import__("motorsearch").__version__
    assert tags[schema.RAY_ADDRESS] == "local"
    assert tags[schema.STATUS] == schema.SEARCH_FINISHED and parent.info.status == "FINISHED"
    assert (tags[schema.METRIC], tags[schema.MODE]) == ("val_f2", "max")
    assert tags[schema.BEST_RUN] == children["good"].info.run_id


def test_parent_artifacts_leaderboard_csv_space_file_and_importance(search, client, children, tmp_path):
    run_id = search.parent_run_id
    assert {a.path for a in client.list_artifacts(run_id, "space")} == {"space/space.yaml"}
    assert {a.path for a in client.list_artifacts(run_id, "pictures")} == {schema.IMPORTANCE_PNG}
    csv = client.download_artifacts(run_id, schema.LEADERBOARD_CSV, str(tmp_path))
    table = pd.read_csv(csv)
    # finished trials first (only they can be exported), then early-stopped, then errored; within a
    # status best_val_f2 descending; the 0.8 tie goes to the trial that reached it at the earlier epoch
    assert list(table["case"]) == ["good", "tie", "short", "crash"]
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert list(table["status"]) == [EXPECTED[c][0] for c in ["good", "tie", "short", "crash"]]


def test_leaderboard_order_equals_mlflow_search_runs_within_each_status(search, client):
    table = leaderboard(client, client.get_run(search.parent_run_id))
    mlflow.set_tracking_uri(search.tracking_uri)
    try:
        frame = mlflow.search_runs(experiment_names=[search.name],
                                   filter_string=f"tags.mlflow.parentRunId = '{search.parent_run_id}'",
                                   order_by=["metrics.best_val_f2 DESC", "metrics.best_epoch ASC"])
    finally:
        mlflow.set_tracking_uri(None)
    status_of = dict(zip(table["run_id"], table["status"], strict=True))
    for status in (schema.FINISHED, schema.EARLY_STOPPED, schema.ERRORED):
        assert list(table[table["status"] == status]["run_id"]) == [
            run for run in frame["run_id"] if status_of[run] == status]
    assert list(table["best_val_f2"]) == pytest.approx([0.8, 0.8, 0.9, 0.95])


@pytest.mark.parametrize("users_value", ["sqlite:////somewhere/else.db", None])
def test_reading_a_leaderboard_leaves_the_users_tracking_uri_variable_alone(search, client, monkeypatch, users_value):
    if users_value is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", users_value)
    assert len(leaderboard(client, client.get_run(search.parent_run_id))) == 4
    assert os.environ.get("MLFLOW_TRACKING_URI") == users_value


def test_best_cli_prints_the_leaderboard(search, capsys):
    code = main(["best", "--experiment", search.name, "--tracking-uri", search.tracking_uri, "--top", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"experiment '{search.name}'" in out and "4 trials" in out and "ranked by best_val_f2 (max)" in out
    rows = [line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 ", "4 "))]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]  # --top 3
    assert "good" in rows[0] and "tie" in rows[1] and "short" in rows[2] and "early_stopped" in rows[2]
    assert "best trial (best_val_f2 on the search's validation fold):" in out and children_trial_id(search, "good") in out


def children_trial_id(search, case):
    return next(r.metrics["trial_id"] for r in search.results if r.config["case"] == case)


def test_best_without_experiment_reads_the_latest_search(search, client, capsys):
    # other modules share this tracking database and may have started later searches
    parents = [run for experiment in client.search_experiments()
               for run in client.search_runs([experiment.experiment_id], filter_string="tags.`motorsearch.role` = 'search'")]
    latest = max(parents, key=lambda run: run.info.start_time)
    assert main(["best", "--tracking-uri", search.tracking_uri]) == 0
    assert f"experiment '{client.get_experiment(latest.info.experiment_id).name}'" in capsys.readouterr().out


def test_top_configs_are_typed_sampled_values_of_ranked_trials(search):
    # errored trials never seed a search; early-stopped ones come after the finished ones (the leaderboard's order)
    assert top_configs(search.name, 2, search.tracking_uri) == [
        {"case": "good", "lr": CASES["good"]["lr"]}, {"case": "tie", "lr": CASES["tie"]["lr"]}]
    assert top_configs(search.name, 3, search.tracking_uri)[2] == {"case": "short", "lr": CASES["short"]["lr"]}
    assert len(top_configs(search.name, 10, search.tracking_uri)) == 3


def test_unknown_experiment_is_exit_2_with_did_you_mean(search, capsys):
    code = main(["best", "--experiment", "tinny", "--tracking-uri", search.tracking_uri])
    err = capsys.readouterr().err
    assert code == 2
    assert "'tinny'" in err and "no such MLflow experiment" in err and "Did you mean 'tiny'?" in err
    assert "Traceback" not in err


def test_a_tracker_survives_pickling_as_tune_does(search):
    from ray import cloudpickle

    from motorsearch.tracking.search_runs import TrialTracker

    tracker = TrialTracker(tracking_uri=search.tracking_uri, experiment_id="1", parent_run_id=search.parent_run_id,
                           objective=Objective(), max_epochs=EPOCHS)
    _ = tracker.client  # a live client must not break pickling
    copy = pickle.loads(cloudpickle.dumps(tracker))
    assert (copy.tracking_uri, copy.parent_run_id, copy.max_epochs) == (search.tracking_uri, search.parent_run_id, 3)
    assert copy.client.get_run(search.parent_run_id).info.run_id == search.parent_run_id


# ------------------------------------------------------------------ tracking URI


@pytest.mark.parametrize(("explicit", "env", "expected"), [
    ("http://a:5000", "http://b:5000", "http://a:5000"),
    (None, "http://b:5000", "http://b:5000"),
    ("  ", "http://b:5000", "http://b:5000"),
    (None, None, "sqlite:///{cwd}/mlflow.db"),
    (None, "", "sqlite:///{cwd}/mlflow.db"),
])
def test_tracking_uri_precedence(explicit, env, expected, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    assert resolve_tracking_uri(explicit) == expected.format(cwd=tmp_path.resolve())


@pytest.mark.parametrize("server", ["closed port", "listens but never answers"])
def test_unreachable_tracking_server_fails_fast(server, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if server == "listens but never answers":
            sock.listen(8)  # connections complete in the backlog; no byte ever comes back
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        start = time.monotonic()
        code = main(["best", "--tracking-uri", uri])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 5.0
    assert f"cannot reach the MLflow tracking server at {uri}" in err and "mlflow server" in err


def test_best_and_export_need_an_existing_store(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/nothing_here.db"
    assert main(["best", "--tracking-uri", uri]) == 2
    assert f"no MLflow database at {tmp_path}/nothing_here.db" in capsys.readouterr().err
    assert not (tmp_path / "nothing_here.db").exists()  # reading never creates a store


def test_an_experiment_without_a_search_is_refused(search, client):
    if client.get_experiment_by_name("not-a-search") is None:
        client.create_experiment("not-a-search")
    with pytest.raises(InputError, match="'not-a-search' holds no motorsearch search"):
        find_search(tracking_client(search.tracking_uri), "not-a-search")


# ------------------------------------------------------------------ pictures


def test_curves_go_to_their_panels_and_skip_the_rest():
    history = [{"epoch": 1, "train_loss": 1.0, "val_f2": 0.2, "val_threshold": math.inf, "time_total_s": 3.0,
                "lr": 1e-3},
               {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_f2": 0.4, "val_threshold": 0.7,
                "node_id": "abc", "epoch_time_s": 2.0, "lr": 5e-4}]
    assert _curves(history) == {
        "losses": {"train_loss": ([1, 2], [1.0, 0.5]), "val_loss": ([2], [0.7])},
        "validation": {"val_f2": ([1, 2], [0.2, 0.4]), "val_threshold": ([2], [0.7])},
        "learning rate": {"lr": ([1, 2], [1e-3, 5e-4])},
    }


def test_training_curves_png_is_a_png(tmp_path):
    path = training_curves_png([{"epoch": e, "train_loss": 1 / e, "val_f2": e / 10} for e in (1, 2, 3)],
                               tmp_path / "sub" / "curves.png")
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        assert image.format == "PNG" and image.size == (1500, 400)
        assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary left behind


def test_a_deleted_checkpoint_is_skipped_for_the_next_best(tmp_path):
    import shutil

    import torch
    from ray import tune
    from tracking_helpers import tiny_config

    from motorsearch.model import build_model
    from motorsearch.model_file import save_model_file
    from motorsearch.tracking.search_runs import _ranked, _stage_first

    cfg = tiny_config()
    checkpoints = []
    for epoch, value in ((1, 0.2), (2, 0.9), (3, 0.5), (4, math.nan)):
        folder = tmp_path / f"checkpoint_{epoch}"
        save_model_file(folder / "model.pt", model=build_model(cfg.model), cfg=cfg, threshold=0.5,
                        metrics={"val_f2": value})
        checkpoints.append((epoch, value, tune.Checkpoint.from_directory(str(folder))))
    assert [item[0] for item in _ranked(checkpoints, "max")] == [2, 3, 1]
    assert [item[0] for item in _ranked(checkpoints, "min")] == [1, 3, 2]
    shutil.rmtree(tmp_path / "checkpoint_2")  # e.g. removed by CheckpointConfig(num_to_keep=...)
    chosen, staged = _stage_first(_ranked(checkpoints, "max"), tmp_path / "staged")
    assert chosen[0] == 3 and staged == tmp_path / "staged" / "model.pt"
    assert verify_checksum(staged) and torch.load(staged, weights_only=True)["metrics"] == {"val_f2": 0.5}
    assert _stage_first([checkpoints[1]], tmp_path / "none") == (None, None)


def test_resume_reopens_the_parent_and_finds_each_trials_run(search, client, children):
    from motorsearch.tracking.search_runs import SearchRun

    resumed = SearchRun.start(name=search.name, objective=Objective(), tracking_uri=search.tracking_uri,
                              resume=True)
    try:
        assert resumed.run_id == search.parent_run_id
        assert client.get_run(resumed.run_id).data.tags[schema.STATUS] == schema.SEARCH_RUNNING
        tracker = resumed.trial_callback(max_epochs=EPOCHS)
        for run in children.values():
            assert tracker._existing_child(run.data.tags[schema.TRIAL_ID]).info.run_id == run.info.run_id
        assert tracker._existing_child("no-such-trial") is None
    finally:
        resumed.finish()
    assert client.get_run(search.parent_run_id).data.tags[schema.STATUS] == schema.SEARCH_FINISHED
