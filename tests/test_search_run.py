"""A real search end to end on a local Ray (2 CPUs), tiny data; fail-fast set-up checks."""

from __future__ import annotations

import io
import time
from pathlib import Path

import optuna
import pytest
from search_support import tiny_dataset, write_space

from motorsearch.cli import main
from motorsearch.errors import InputError
from motorsearch.search.runner import format_leaderboard, rank_trials, run_search
from motorsearch.search.space_file import load_space
from motorsearch.search.trainable import read_attempts


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("search_data") / "sim")


PARAMETERS = {
    "optim.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
    "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal"]},
    "loss.gamma": {"type": "float", "low": 1.0, "high": 3.0, "when": {"loss.name": "focal"}},
}


def test_two_trial_search_end_to_end(local_ray, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       parameters=PARAMETERS, searcher={"sampler": "random", "seed": 4})
    started = time.perf_counter()
    space = load_space(path)
    first = {"optim.lr": 1.0e-3, "loss.name": "focal", "loss.gamma": 2.5}  # a warm start, tried first
    outcome = run_search(space, points_to_evaluate=[first], verbose=0, out=io.StringIO())
    wall = time.perf_counter() - started
    print(f"2-trial search: {wall:.1f} s")
    assert wall < 120

    rows = outcome.leaderboard
    assert len(rows) == 2 and outcome.complete
    assert all(r.status == "finished" and r.epochs_run == 2 and r.value is not None for r in rows)
    assert rows[0].value >= rows[1].value
    for row in rows:
        assert set(row.params) == ({"optim.lr", "loss.name", "loss.gamma"} if row.params["loss.name"] == "focal"
                                   else {"optim.lr", "loss.name"})
        assert (Path(row.checkpoint) / "model.pt").is_file() and (Path(row.checkpoint) / "state.pt").is_file()
        attempts = read_attempts(row.path)
        assert [a["resumed_from_epoch"] for a in attempts] == [0] and attempts[0]["device"] == "cpu"
    assert first in [r.params for r in rows]
    # checkpoints_to_keep (2) bounds what each trial keeps
    assert all(len(list(Path(r.path).glob("checkpoint_*"))) <= 2 for r in rows)

    # the Optuna study is on disk beside the results, one finished trial per Tune trial
    assert outcome.study_storage == f"sqlite:///{space.experiment_path}/optuna.db"
    study = optuna.load_study(study_name="tiny", storage=outcome.study_storage)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.params["optim.lr"] for t in finished) == sorted(r.params["optim.lr"] for r in rows)

    table = format_leaderboard(rows, metric="val_f2")
    assert table.splitlines()[0].split()[:5] == ["#", "trial", "val_f2", "epoch", "status"]
    assert f"best model file: {rows[0].checkpoint}/model.pt" in table

    # the same name again without --resume is refused instead of mixing two searches
    with pytest.raises(InputError, match="already exists .* --resume"):
        run_search(load_space(path), verbose=0, out=io.StringIO())


def test_gpu_request_on_cpu_cluster_fails_fast(local_ray, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       resources={"cpu": 1, "gpu": 1})
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        run_search(load_space(path), verbose=0, out=io.StringIO())
    assert time.perf_counter() - started < 10
    assert str(info.value).startswith("resources.gpu=1 but the cluster has no GPU (cluster resources: CPU 2)")


def test_cpu_request_larger_than_any_node_fails_fast(local_ray, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       resources={"cpu": 3})
    with pytest.raises(InputError, match=r"resources.cpu=3 but no node has more than 2 CPU\(s\)"):
        run_search(load_space(path), verbose=0, out=io.StringIO())


@pytest.mark.parametrize(("point", "message"), [
    ({"optim.lrr": 1e-3}, "points_to_evaluate[0]: 'optim.lrr' is not a sampled parameter of"),
    ({"optim.lr": -1.0}, "points_to_evaluate[0]: optim.lr=-1.0 is rejected: `optim.lr` must be positive"),
])
def test_bad_points_to_evaluate_are_refused_before_ray(tmp_path: Path, point: dict, message: str) -> None:
    path = write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache", storage=tmp_path / "runs")
    with pytest.raises(InputError) as info:
        run_search(load_space(path), points_to_evaluate=[point], out=io.StringIO())
    assert message in str(info.value)


def test_shipped_space_files_load() -> None:
    repo = Path(__file__).resolve().parents[1]
    demo = load_space(repo / "search_spaces" / "demo.yaml")
    assert (demo.resources.gpu, demo.scheduler.type, demo.num_samples) == (0.0, "asha", 8)
    byu = load_space(repo / "search_spaces" / "byu.yaml")
    assert byu.resources.gpu == 0.25 and {"loss.gamma", "data.spacing", "optim.backbone_lr_ratio", "augment.zoom_min",
                                          "test_time.spacing", "test_time.assumed_spacing_a"} <= {
        p.path for p in byu.parameters}
    assert byu.objective.value_key == "best_val_ap" and byu.base.validation.unknown_spacing


def test_cli_exits_2_on_a_bad_space_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("parameters:\n  optim.lrr: {type: float, low: 0.1, high: 1}\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optim.lrr'. Did you mean 'optim.lr'?" in err and "Traceback" not in err


def test_leaderboard_keeps_a_trial_whose_checkpoint_never_reached_the_disk(tmp_path: Path) -> None:
    """A trial stopped (by the budget) as it reported has a value but no checkpoint: rank it, point at nothing."""
    import pandas as pd
    from ray.tune import Result

    space = load_space(write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache",
                                   storage=tmp_path / "runs"))
    frame = pd.DataFrame({"epoch": [1, 2], "val_f2": [0.4, 0.7]})
    result = Result(metrics={"epoch": 2, "val_f2": 0.7, "best_val_f2": 0.7, "best_epoch": 2.0}, checkpoint=None,
                    error=None,
                    path=str(tmp_path / "trial_abc"), metrics_dataframe=frame, best_checkpoints=None)
    (row,) = rank_trials([result], space)
    assert (row.trial_id, row.value, row.epoch, row.epochs_run, row.checkpoint) == ("abc", 0.7, 2, 2, None)


def test_cli_rejects_a_budget_below_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache", storage=tmp_path / "runs")
    assert main(["run", str(path), "--budget-epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert "`--budget-epochs` must be at least 1, but got --budget-epochs=0." in err and "Traceback" not in err


def test_cli_resume_without_a_search_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache", storage=tmp_path / "runs")
    assert main(["run", str(path), "--resume", "--name", "never_ran"]) == 2
    assert "--resume: no search to resume at" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_every_sampler_suggests_valid_trial_configs(tmp_path: Path, sampler: str) -> None:
    from motorsearch.search.study import make_searcher

    path = write_space(tmp_path / "space.yaml", data=tmp_path, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       parameters={**PARAMETERS, "target.sigma_a": {"type": "float", "low": 100.0, "high": 300.0}},
                       searcher={"sampler": sampler, "seed": 1, "n_startup_trials": 2})
    space = load_space(path)
    searcher = make_searcher(space, f"sqlite:///{tmp_path}/study.db", None)
    for index in range(5):
        config = searcher.suggest(f"t{index}")
        assert space.trial_config(config).optim.lr == config["optim.lr"]
        searcher.on_trial_complete(f"t{index}", {"best_val_f2": config["optim.lr"] * 10, "best_epoch": 2.0,
                                                 "epoch": 2, "training_iteration": 2})
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.trials) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [t.value for t in study.trials] == pytest.approx([t.params["optim.lr"] * 10 for t in study.trials])
