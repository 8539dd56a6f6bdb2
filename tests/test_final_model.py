"""From a search to the final model, with real Ray, MLflow and files: confirmation across folds (the
space file's ``confirm:`` phase of ``run`` and the ``confirm`` command), ``best``/``export`` on the
confirmed ranking, ``export --ensemble`` and ``refit``.

One search of 3 trials on the tiny dataset split in 3 folds (validated on fold 0), confirmed for
its top 2 on folds 1 and 2, serves every test of the module.
"""

from __future__ import annotations

import io
import math
import os
import statistics
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from search_support import tiny_dataset, write_space

from motorsearch.cli import main
from motorsearch.errors import ModelFileError
from motorsearch.model_file import checksum_path, content_sha256, load_model_file
from motorsearch.tracking import schema
from motorsearch.tracking.export import fetch_best_model
from motorsearch.tracking.leaderboard import find_search, leaderboard

pytestmark = pytest.mark.usefixtures("ray_for_the_module")
NAME = "tiny_final"
TOP_K, N_FOLDS = 2, 3


@dataclass
class Confirmed:
    folder: Path
    uri: str
    out: str  # what `run` printed
    client: MlflowClient

    def search(self):
        return find_search(self.client, NAME)

    def runs(self, role: str) -> list:
        search = self.search()
        return [run for run in self.client.search_runs([search.info.experiment_id],
                                                       filter_string=f"tags.`{schema.PARENT}` = '{search.info.run_id}'")
                if run.data.tags.get(schema.ROLE) == role]

    def cli(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([*args, "--tracking-uri", self.uri])
        return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> Confirmed:
    folder = tmp_path_factory.mktemp("final")
    data = tiny_dataset(folder / "sim")
    space = write_space(folder / "space.yaml", data=data, cache=folder / "cache", storage=folder / "runs",
                        name=NAME, epochs=2, num_samples=3, overrides={"data.n_folds": N_FOLDS},
                        confirm={"top_k": TOP_K, "folds": "all"})
    uri = f"sqlite:///{folder}/mlflow.db"
    before = Path.cwd()
    os.chdir(folder)
    try:
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            assert main(["run", str(space), "--tracking-uri", uri]) == 0
    finally:
        os.chdir(before)
    return Confirmed(folder=folder, uri=uri, out=buffer.getvalue(), client=MlflowClient(uri))


def _objective(run) -> float:
    return run.data.metrics["best_val_f2"]


def test_confirmation_trains_the_top_k_on_every_other_fold(confirmed):
    table = leaderboard(confirmed.client, confirmed.search())
    assert len(table) == 3  # the search's trials only: confirmation runs are not trials
    top = list(table[table["status"] == schema.FINISHED]["run_id"].head(TOP_K))
    runs = confirmed.runs(schema.ROLE_CONFIRMATION)
    assert len(runs) == TOP_K * (N_FOLDS - 1)
    trained = sorted((run.data.tags[schema.CANDIDATE], int(run.data.tags[schema.FOLD])) for run in runs)
    assert trained == sorted((run_id, fold) for run_id in top for fold in (1, 2))
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags[schema.STATUS] == schema.FINISHED
        assert run.data.params["data.fold"] == run.data.tags[schema.FOLD]
        assert "best_val_f2" in run.data.metrics and run.data.metrics["last_epoch"] == 2
    assert "## Confirmed ranking" in confirmed.out


def test_candidates_are_ranked_by_their_mean_over_folds(confirmed):
    runs = confirmed.runs(schema.ROLE_CONFIRMATION)
    table = leaderboard(confirmed.client, confirmed.search())
    ranked = table[table[schema.CONFIRMED_RANK].notna()].sort_values(schema.CONFIRMED_RANK)
    assert list(ranked[schema.CONFIRMED_RANK]) == [1.0, 2.0]
    expected = {}
    for row in ranked.to_dict("records"):
        values = [row["best_val_f2"]] + [_objective(r) for r in runs if r.data.tags[schema.CANDIDATE] == row["run_id"]]
        assert len(values) == N_FOLDS
        expected[row["run_id"]] = statistics.mean(values)
        assert row["confirmed_best_val_f2"] == pytest.approx(statistics.mean(values))
        assert row["confirmed_best_val_f2_std"] == pytest.approx(statistics.stdev(values))
        assert row[schema.CONFIRMED_FOLDS] == N_FOLDS
    first, second = ranked["run_id"]
    assert expected[first] > expected[second] or (
        expected[first] == expected[second] and ranked["rank"].iloc[0] < ranked["rank"].iloc[1])
    search = confirmed.search()
    assert search.data.tags[schema.CONFIRMATION].startswith(f"{NAME}-confirm-")
    artifacts = [a.path for a in confirmed.client.list_artifacts(search.info.run_id)]
    assert schema.CONFIRMATION_CSV in artifacts


def test_best_and_export_use_the_confirmed_ranking(confirmed, tmp_path):
    table = leaderboard(confirmed.client, confirmed.search())
    pick = table[table[schema.CONFIRMED_RANK] == 1]["run_id"].iloc[0]
    code, out, _ = confirmed.cli("best", "--experiment", NAME)
    assert code == 0 and "confirmed ranking of 2 trials (mean best_val_f2 over 3 folds" in out
    assert f"best trial (confirmed: mean best_val_f2 over 3 folds): {table[table.run_id == pick].trial_id.iloc[0]}" in out
    code, out, _ = confirmed.cli("export", "--experiment", NAME, "--out", str(tmp_path / "best.pt"))
    assert code == 0 and f"(run {pick}, finished)" in out and "ranking: confirmed" in out
    assert load_model_file(tmp_path / "best.pt").metrics == load_model_file(
        fetch_best_model(confirmed.client, pick, tmp_path / "fetched")).metrics


def _snapshot(confirmed) -> tuple[int, list[str]]:
    search = confirmed.search()
    runs = confirmed.client.search_runs([search.info.experiment_id])
    files = sorted(str(p.relative_to(confirmed.folder)) for p in confirmed.folder.rglob("*")
                   if "mlartifacts" not in p.parts and p.name != "mlflow.db")
    return len(runs), files


@pytest.mark.parametrize(("args", "message"), [
    (["confirm", "--experiment", NAME, "--top", "4"], "fewer than --top 4"),
    (["confirm", "--experiment", NAME, "--folds", "7"], "fold 7 is out of range"),
    (["confirm", "--experiment", NAME, "--folds", "0"], "only the search's own validation fold"),
    (["confirm", "--experiment", NAME, "--folds", "one"], "`--folds` must be 'all' or fold numbers"),
    (["confirm", "--experiment", NAME, "--top", "0"], "`--top` must be at least 1"),
    (["confirm", "--experiment", "nonexistent"], "no such MLflow experiment"),
    (["export", "--experiment", NAME, "--ensemble", "3", "--out", "{tmp}/e.pt"], "fewer than 3"),
    (["export", "--experiment", NAME, "--ensemble", "1", "--out", "{tmp}/e.pt"], "must be at least 2"),
    (["export", "--run-id", "abc", "--ensemble", "2", "--out", "{tmp}/e.pt"], "cannot be combined with --run-id"),
    (["refit", "--experiment", NAME, "--epochs", "0", "--out", "{tmp}/r.pt"], "`--epochs` must be at least 1"),
    (["refit", "--experiment", NAME, "--out", "{tmp}/absent/r.pt"], "does not exist"),
])
def test_bad_input_exits_2_and_writes_nothing(confirmed, tmp_path, args, message):
    before = _snapshot(confirmed)
    code, out, err = confirmed.cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(confirmed) == before and list(tmp_path.iterdir()) == []


def test_the_ensemble_file_predicts_the_average_of_its_members(confirmed, tmp_path):
    from motorsearch.data.cache import prepare
    from motorsearch.predict import Predictor

    out = tmp_path / "ensemble.pt"
    code, printed, _ = confirmed.cli("export", "--experiment", NAME, "--ensemble", "2", "--out", str(out))
    assert code == 0 and "ensemble of 2 trials" in printed
    payload = torch.load(out, weights_only=True)
    assert payload["sha256"] == content_sha256(payload) and checksum_path(out).is_file()
    table = leaderboard(confirmed.client, confirmed.search())
    order = list(table[table[schema.CONFIRMED_RANK].notna()].sort_values(schema.CONFIRMED_RANK)["run_id"])
    assert payload["extra"]["member_run_ids"] == order
    ensemble = load_model_file(out)
    members = [load_model_file(fetch_best_model(confirmed.client, run_id, tmp_path / run_id)) for run_id in order]
    assert ensemble.members == 2
    cfg = members[0].experiment_config()
    tomogram = prepare(cfg.data).val_tomograms(cfg.data.fold)[0]
    volume = np.asarray(tomogram.volume())
    heatmaps = [Predictor(m).heatmap(volume, spacing=tomogram.spacing)[0] for m in members]
    together = Predictor(ensemble).heatmap(volume, spacing=tomogram.spacing)[0]
    np.testing.assert_allclose(together, np.mean(heatmaps, axis=0), atol=1e-5)
    assert not np.allclose(heatmaps[0], heatmaps[1], atol=1e-3)  # two different models were averaged


def test_a_tampered_ensemble_file_is_refused(confirmed, tmp_path):
    out = tmp_path / "ensemble.pt"
    assert confirmed.cli("export", "--experiment", NAME, "--ensemble", "2", "--out", str(out))[0] == 0
    payload = torch.load(out, weights_only=True)
    weights = payload["members"][1]["state_dict"]
    name = next(iter(weights))
    weights[name] = weights[name] + 0.5
    torch.save(payload, out)
    checksum_path(out).unlink()  # no sidecar either: the seal inside must catch it
    with pytest.raises(ModelFileError, match="does not match the sha256 written inside"):
        load_model_file(out)


def test_refit_trains_the_pick_on_every_labelled_tomogram(confirmed, tmp_path):
    from motorsearch.data.cache import prepare
    from motorsearch.selection.out_of_fold import score_out_of_fold

    out = tmp_path / "final.pt"
    code, printed, err = confirmed.cli("refit", "--experiment", NAME, "--out", str(out))
    assert code == 0, err
    refit = load_model_file(out)
    table = leaderboard(confirmed.client, confirmed.search())
    pick = table[table[schema.CONFIRMED_RANK] == 1]["run_id"].iloc[0]
    cfg = refit.experiment_config()
    assert refit.extra["trained_on"] == sorted(t.tomo_id for t in prepare(cfg.data).labelled())
    assert len(refit.extra["trained_on"]) == 6 and refit.extra["refit_of"] == pick

    fold_runs = [confirmed.client.get_run(pick)] + [
        r for r in confirmed.runs(schema.ROLE_CONFIRMATION) if r.data.tags[schema.CANDIDATE] == pick]
    best_epochs = [int(r.data.metrics["best_epoch"]) for r in fold_runs]
    assert cfg.optim.epochs == max(1, round(statistics.median(best_epochs)))
    models = [load_model_file(fetch_best_model(confirmed.client, r.info.run_id, tmp_path / r.info.run_id))
              for r in fold_runs]
    oof = score_out_of_fold(models)
    assert sorted(oof.folds) == [0, 1, 2] and oof.tomograms == 6
    assert refit.threshold == oof.threshold and refit.metrics["oof_f2"] == pytest.approx(oof.f2)

    (run,) = confirmed.runs(schema.ROLE_REFIT)[:1]
    assert run.info.status == "FINISHED" and run.data.tags[schema.CANDIDATE] == pick
    assert run.data.tags[schema.BEST_MODEL_SHA256] == checksum_path(out).read_text().split()[0]
    # nothing is held out, so the run checks and reports once, after its last epoch
    (loss,) = confirmed.client.get_metric_history(run.info.run_id, "train_loss")
    assert loss.step == cfg.optim.epochs and math.isfinite(loss.value)


def test_refit_and_confirm_refuse_a_search_without_a_finished_trial(tmp_path):
    """A search whose every trial errored, recorded as ``run`` records one (real MLflow, no Ray needed)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("all_errored")
    parent = client.create_run(experiment, tags={schema.ROLE: schema.ROLE_SEARCH, schema.METRIC: "val_f2",
                                                 schema.MODE: "max", schema.STATUS: schema.SEARCH_FINISHED})
    child = client.create_run(experiment, tags={schema.ROLE: schema.ROLE_TRIAL, schema.PARENT: parent.info.run_id,
                                                schema.TRIAL_ID: "t1", schema.STATUS: schema.ERRORED})
    client.set_terminated(child.info.run_id, status="FAILED")
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in ((["refit", "--out", str(tmp_path / "r.pt")], "no configuration to refit"),
                          (["confirm", "--top", "1"], "fewer than --top 1"),
                          (["export", "--ensemble", "2", "--out", str(tmp_path / "e.pt")], "fewer than 2")):
        err = io.StringIO()
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            code = main([*args, "--experiment", "all_errored", "--tracking-uri", uri])
        assert code == 2 and message in err.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(client.search_runs([experiment])) == 2
