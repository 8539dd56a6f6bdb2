"""``export``: the pick (equal to the top of mlflow.search_runs), the written file, registry, bad input.

Reads the tiny tracked search of ``tracking_helpers`` (case table there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from tracking_helpers import checkpoint_model_file, trial_runs_by_case

from motorsearch.cli import main
from motorsearch.errors import ModelFileError
from motorsearch.evaluation.inference import predict_volume
from motorsearch.model_file import checksum_path, file_sha256, load_model_file
from motorsearch.objective import Objective
from motorsearch.tracking import schema
from motorsearch.tracking.export import CHAMPION, export_best, pick_trial
from motorsearch.tracking.search_runs import SearchRun


@pytest.fixture(scope="module")
def run_of(search, client):
    by_case = trial_runs_by_case(search, client)
    return lambda case: by_case[case].info.run_id


@pytest.fixture(scope="module")
def exported(search, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "best.pt"
    code = main(["export", "--experiment", search.name, "--out", str(out), "--tracking-uri", search.tracking_uri])
    assert code == 0
    return out


def test_export_picks_the_top_finished_trial_of_mlflow_search_runs(search, run_of):
    mlflow.set_tracking_uri(search.tracking_uri)
    try:
        ranked = mlflow.search_runs(experiment_names=[search.name],
                                    filter_string=f"tags.mlflow.parentRunId = '{search.parent_run_id}' "
                                                  f"and tags.`motorsearch.status` = 'finished'",
                                    order_by=["metrics.best_val_f2 DESC", "metrics.best_epoch ASC"])
    finally:
        mlflow.set_tracking_uri(None)
    pick = pick_trial(MlflowClient(search.tracking_uri), experiment_name=search.name)
    assert pick.run_id == ranked["run_id"].iloc[0] == run_of("good")
    # "short" (0.9) and "crash" (0.95) score higher but did not finish; "tie" reached 0.8 later
    assert (pick.metric, pick.mode, pick.value, pick.status) == ("best_val_f2", "max", pytest.approx(0.8), "finished")


def test_exported_file_is_the_best_checkpoint_with_a_checksum(search, exported):
    assert file_sha256(exported) == file_sha256(checkpoint_model_file(search, "good", 2))
    sidecar = checksum_path(exported)
    assert sidecar.read_text() == f"{file_sha256(exported)}  best.pt\n"
    assert sorted(p.name for p in exported.parent.iterdir()) == ["best.pt", "best.pt.sha256"]  # no temporaries


def test_exported_model_predicts_identically_to_the_trials_checkpoint(search, exported):
    torch.set_num_threads(1)
    volume = np.random.default_rng(0).normal(size=(40, 32, 48)).astype(np.float32)
    predictions = []
    for path in (exported, checkpoint_model_file(search, "good", 2)):
        loaded = load_model_file(path)
        prep = loaded.preprocessing
        predictions.append(predict_volume(loaded.model, volume, patch_size=prep["patch_size"], stride=prep["stride"],
                                          overlap=prep["overlap"], batch_size=1, device="cpu"))
    assert predictions[0].shape == (3, 2, 3)
    np.testing.assert_array_equal(predictions[0], predictions[1])
    # and it is not just any model of the trial: the last epoch's predicts differently
    last = load_model_file(checkpoint_model_file(search, "good", 3))
    other = predict_volume(last.model, volume, patch_size=[32, 32, 32], stride=16, overlap=0.5, batch_size=1,
                           device="cpu")
    assert not np.array_equal(predictions[0], other)


def test_a_tampered_export_is_refused(exported, tmp_path):
    copy = tmp_path / "best.pt"
    shutil.copyfile(exported, copy)
    shutil.copyfile(checksum_path(exported), checksum_path(copy))
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model_file(copy)


def test_a_tampered_artifact_is_refused_on_export(search, client, run_of, tmp_path, capsys):
    run_id = run_of("tie")
    artifact = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://")) / schema.BEST_MODEL
    original = artifact.read_bytes()
    try:
        artifact.write_bytes(original[:-10] + b"0123456789")
        code = main(["export", "--run-id", run_id, "--out", str(tmp_path / "x.pt"),
                     "--tracking-uri", search.tracking_uri])
    finally:
        artifact.write_bytes(original)
    err = capsys.readouterr().err
    assert code == 2 and "was recorded when it was logged" in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(("case", "status"), [("short", "early_stopped"), ("tie", "finished")])
def test_run_id_of_a_trial_exports_that_trial(search, run_of, tmp_path, case, status):
    out = tmp_path / f"{case}.pt"
    result = export_best(out, run_id=run_of(case), tracking_uri=search.tracking_uri)
    assert (result.pick.run_id, result.pick.status) == (run_of(case), status)
    best_epoch = {"short": 1, "tie": 3}[case]
    assert file_sha256(out) == file_sha256(checkpoint_model_file(search, case, best_epoch))


def test_run_id_of_the_search_picks_its_best_finished_trial(search, run_of, tmp_path):
    result = export_best(tmp_path / "m.pt", run_id=search.parent_run_id, tracking_uri=search.tracking_uri)
    assert result.pick.run_id == run_of("good")


def test_register_creates_a_version_with_alias_champion(search, client, run_of, tmp_path, capsys):
    out = tmp_path / "best.pt"
    for _ in range(2):  # a second export adds a version and moves the alias
        assert main(["export", "--experiment", search.name, "--out", str(out), "--register", "motor-detector",
                     "--tracking-uri", search.tracking_uri]) == 0
    assert "registered as motor-detector version 2, alias 'champion'" in capsys.readouterr().out
    version = client.get_model_version_by_alias("motor-detector", CHAMPION)
    assert str(version.version) == "2" and version.run_id == run_of("good")
    assert version.tags["sha256"] == file_sha256(out)
    assert version.source.endswith("/checkpoints/best")


@pytest.mark.parametrize(("args", "message"), [
    (["--experiment", "tinyy"], "Did you mean 'tiny'?"),
    (["--run-id", "0123456789abcdef0123456789abcdef"], "no such MLflow run"),
])
def test_unknown_experiment_or_run_id_is_exit_2(search, tmp_path, capsys, args, message):
    code = main(["export", *args, "--out", str(tmp_path / "m.pt"), "--tracking-uri", search.tracking_uri])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_a_search_without_finished_trials_is_exit_2(search, client, tmp_path, capsys):
    parent = SearchRun.start(name="nothing-finished", objective=Objective(), tracking_uri=search.tracking_uri)
    for status, value in ((schema.EARLY_STOPPED, 0.7), (schema.ERRORED, 0.9)):
        run = client.create_run(parent.experiment_id, tags={
            schema.PARENT: parent.run_id, schema.ROLE: schema.ROLE_TRIAL, schema.STATUS: status,
            schema.TRIAL_ID: status, schema.PARAMS_JSON: "{}"})
        client.log_metric(run.info.run_id, "best_val_f2", value)
    parent.finish()
    code = main(["export", "--experiment", "nothing-finished", "--out", str(tmp_path / "m.pt"),
                 "--tracking-uri", search.tracking_uri])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no finished trial" in err and "1 early_stopped, 1 errored" in err


def test_out_in_a_missing_folder_is_exit_2(search, tmp_path, capsys):
    code = main(["export", "--experiment", search.name, "--out", str(tmp_path / "no" / "m.pt"),
                 "--tracking-uri", search.tracking_uri])
    assert code == 2 and "does not exist" in capsys.readouterr().err

