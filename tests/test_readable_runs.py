"""What a reader of the MLflow UI sees of a search: names, summary, description, charts, dashboard hint."""

from __future__ import annotations

import io
import json

import numpy as np
from mlflow.tracking import MlflowClient
from PIL import Image
from tracking_helpers import CASES, shared_search, trial_runs_by_case

from motorsearch.search.cluster import ClusterInfo, dashboard_message
from motorsearch.tracking import schema
from motorsearch.tracking.pictures import training_curves_png
from motorsearch.tracking.search_runs import trial_run_name


def test_trial_run_name_reads_search_number_and_values():
    params = {"optim.lr": 0.0012345678, "loss.name": "focal", "sampling.batch_size": 2}
    assert trial_run_name("demo", 3, params) == "demo #3 loss.name=focal optim.lr=0.00123 sampling.batch_size=2"
    assert trial_run_name("demo", None, {}) == "demo"
    assert len(trial_run_name("demo", 1, {"x": "y" * 500})) == 120


def test_runs_are_named_and_the_parent_sums_the_search_up():
    search = shared_search()
    client = MlflowClient(search.tracking_uri)
    experiment = client.get_experiment_by_name(search.name)
    assert experiment.tags[schema.EXPERIMENT_KIND] == schema.MODEL_TRAINING
    view = json.loads(experiment.tags[schema.SHARED_VIEW_PREFIX + schema.RUNS_VIEW])
    assert view["selectedColumns"][:3] == ["metrics.`best_val_f2`", "metrics.`best_epoch`",
                                           f"tags.`{schema.STATUS}`"]
    assert {"params.`case`", "params.`lr`"} <= set(view["selectedColumns"])

    runs = trial_runs_by_case(search, client)
    for case, run in runs.items():
        assert run.info.run_name.startswith(f"{search.name} #") and f"case={case}" in run.info.run_name
        assert run.data.tags[schema.TRIAL_ID] in {r.metrics["trial_id"] for r in search.results}

    parent = client.get_run(search.parent_run_id)
    assert parent.info.run_name.startswith(f"{search.name} search ")
    metrics = parent.data.metrics
    # good and tie finished, short stopped early, crash errored (tracking_helpers.CASES)
    assert (metrics["trials_finished"], metrics["trials_early_stopped"], metrics["trials_errored"],
            metrics["trials_interrupted"]) == (2, 1, 1, 0) and len(CASES) == 4
    assert metrics["best_val_f2"] == 0.8  # the best *finished* trial's objective: good, 0.8 at epoch 2
    note = parent.data.tags[schema.NOTE]
    good = runs["good"]
    assert f"Best finished trial: [{good.info.run_name}](#/experiments/{experiment.experiment_id}/runs/" \
           f"{good.info.run_id}), `best_val_f2` = 0.8 at epoch 2" in note
    assert note.count("\n| ") == 1 + len(CASES)  # header and one row per trial (the separator starts "|---")


def test_bookkeeping_goes_under_system_and_out_of_the_curves():
    search = shared_search()
    client = MlflowClient(search.tracking_uri)
    run = trial_runs_by_case(search, client)["good"]
    keys = set(run.data.metrics)
    for name in ("time_total_s", "trial_started_at"):
        assert name not in keys
    assert f"{schema.SYS_PREFIX}time_total_s" in keys and "val_f2" in keys


def test_the_curves_mark_the_best_epoch(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_f2": e / 10} for e in (1, 2, 3)]
    plain = np.asarray(Image.open(io.BytesIO(training_curves_png(history, tmp_path / "a.png").read_bytes())))
    marked = np.asarray(Image.open(io.BytesIO(
        training_curves_png(history, tmp_path / "b.png", best_epoch=2).read_bytes())))
    green = np.array([0x2C, 0xA0, 0x2C])  # matplotlib's tab:green, the marker's colour

    def count(image: np.ndarray) -> int:
        return int((np.abs(image[..., :3].astype(int) - green).sum(axis=-1) < 30).sum())

    assert count(plain) == 0 and count(marked) > 100


def test_the_dashboard_hint_uses_the_port_it_took():
    info = ClusterInfo(nodes=[], resources={}, started_here=True, dashboard_url="http://127.0.0.1:8266")
    message = dashboard_message(info)
    assert "ssh -L 8266:127.0.0.1:8266" in message and "8265" not in message
    assert "make ray-start" in message
