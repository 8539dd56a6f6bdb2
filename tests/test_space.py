"""The search-space file: parsing, validation messages, and the define-by-run sampler."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from motorsearch.errors import ConfigError
from motorsearch.search.space import Parameter, order_parameters
from motorsearch.search.space_file import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def space_file(tmp_path: Path, body: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def load(tmp_path: Path, parameters: dict | None = None, **top) -> object:
    body = {"storage_path": str(tmp_path / "runs"), "overrides": {"data.cache_dir": str(tmp_path / "cache")}, **top}
    if parameters is not None:
        body["parameters"] = parameters
    return load_space(space_file(tmp_path, body))


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
     Parameter("optim.lr", "float", low=1e-4, high=1e-2, log=True)),
    ({"type": "float", "low": "1e-4", "high": 0.01},  # YAML 1.1 reads 1e-4 as a string
     Parameter("optim.lr", "float", low=1e-4, high=0.01)),
    ({"type": "float", "low": 0.001, "high": 0.01, "step": 0.001},
     Parameter("optim.lr", "float", low=0.001, high=0.01, step=0.001)),
    ({"type": "categorical", "choices": [1e-3, 3e-3]}, Parameter("optim.lr", "categorical", choices=(1e-3, 3e-3))),
    ({"value": 0.002}, Parameter("optim.lr", "fixed", value=0.002)),
])
def test_float_field_specs(tmp_path: Path, spec: dict, expected: Parameter) -> None:
    space = load(tmp_path, {"optim.lr": spec})
    assert space.parameters == [expected]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "int", "low": 2, "high": 8}, Parameter("optim.epochs", "int", low=2, high=8)),
    ({"type": "int", "low": 2, "high": 8, "step": 2}, Parameter("optim.epochs", "int", low=2, high=8, step=2)),
    ({"type": "int", "low": 1, "high": 16, "log": True}, Parameter("optim.epochs", "int", low=1, high=16, log=True)),
])
def test_int_field_specs(tmp_path: Path, spec: dict, expected: Parameter) -> None:
    space = load(tmp_path, {"optim.epochs": spec})
    assert space.parameters == [expected]
    assert space.max_epochs == expected.high  # ASHA's max_t follows the largest epoch count


def test_conditional_spec_and_top_level_defaults(tmp_path: Path) -> None:
    space = load(tmp_path, {
        "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal", "bce_topk"]},
        "loss.gamma": {"type": "float", "low": 0.5, "high": 4, "when": {"loss.name": "focal"}},
        "loss.top_k_fraction": {"type": "float", "low": 0.05, "high": 0.5,
                                "when": {"loss.name": ["bce_topk", "focal"]}},
    })
    assert space.parameters[1].when == (("loss.name", ("focal",)),)
    assert space.parameters[2].when == (("loss.name", ("bce_topk", "focal")),)
    assert (space.metric, space.mode, space.num_samples, space.max_failures) == ("val_f2", "max", 8, 2)
    assert space.resources.cpu == 1.0 and space.resources.gpu == 0.0
    assert space.scheduler.type == "asha" and space.searcher.sampler == "tpe"
    assert space.name == "space"  # the file's stem
    assert space.budget_epochs is None  # no budget unless asked: num_samples alone ends the search
    assert space.storage_path == str((tmp_path / "runs").resolve())
    assert space.experiment_path == f"{(tmp_path / 'runs').resolve()}/space"


def test_experiment_overrides_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "experiments").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "experiments" / "base.yaml").write_text("optim:\n  lr: 0.003\n  epochs: 9\nloss:\n  name: focal\n")
    path = space_file(tmp_path / "search_spaces", {
        "experiment": "experiments/base.yaml",  # found in the space file's parent folder
        "overrides": {"loss.pos_weight": 3.0, "data.cache_dir": "rel/cache"},
        "scheduler": {"max_epochs": 4, "grace_period": 2},
        "storage_path": "out",
    })
    monkeypatch.chdir(tmp_path)
    space = load_space(path, overrides=["optim.weight_decay=0.5"], name="other", num_samples=3)
    assert space.experiment == (tmp_path / "experiments" / "base.yaml").resolve()
    base = space.base
    assert (base.optim.lr, base.loss.name, base.loss.pos_weight, base.optim.weight_decay) == (0.003, "focal", 3.0, 0.5)
    assert base.optim.epochs == 4 and space.max_epochs == 4  # scheduler.max_epochs sets optim.epochs
    assert base.data.cache_dir == str(tmp_path.resolve() / "rel" / "cache")  # absolute: trials change directory
    assert space.storage_path == str(tmp_path.resolve() / "out")
    assert (space.name, space.num_samples) == ("other", 3)


def test_budget_from_file_and_flag(tmp_path: Path) -> None:
    path = space_file(tmp_path, {"storage_path": str(tmp_path / "runs"), "budget_epochs": 40})
    assert load_space(path).budget_epochs == 40
    assert load_space(path, budget_epochs=12).budget_epochs == 12  # the --budget-epochs flag wins


def test_uri_storage_stays_a_uri(tmp_path: Path) -> None:
    space = load(tmp_path, storage_path="s3://bucket/searches")
    assert space.storage_path == "s3://bucket/searches"
    assert space.experiment_path == "s3://bucket/searches/space"


@pytest.mark.parametrize(("body", "message"), [
    ({"parameters": {"optim.lrr": {"type": "float", "low": 0.1, "high": 1}}},
     "`parameters.optim.lrr`: unknown config key 'optim.lrr'. Did you mean 'optim.lr'?"),
    ({"parameters": {"optim.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
     "`parameters.optim.lr.low` must be below parameters.optim.lr.high=0.01, but got parameters.optim.lr.low=0.1."),
    ({"parameters": {"optim.lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}},
     "`parameters.optim.lr.low` must be positive with log: true, but got parameters.optim.lr.low=0.0."),
    ({"parameters": {"optim.lr": {"type": "float", "low": -1.0, "high": 0.01}}},
     "`parameters.optim.lr` can take -1.0, which the experiment config rejects: `optim.lr` must be positive, "
     "but got optim.lr=-1.0."),
    ({"parameters": {"optim.lr": {"type": "floot", "low": 0.1, "high": 1}}},
     "`parameters.optim.lr.type` must be float, int or categorical (or give `value:` for a fixed value), "
     "but got parameters.optim.lr.type='floot'. Did you mean 'float'?"),
    ({"parameters": {"optim.lr": {"type": "float", "low": 0.1, "hgih": 1}}},
     "unknown key 'parameters.optim.lr.hgih' for a float parameter. Did you mean 'high'?"),
    ({"parameters": {"optim.epochs": {"type": "float", "low": 1, "high": 4}}},
     "`parameters.optim.epochs` has type float, but the config field optim.epochs holds int; use type int."),
    ({"parameters": {"loss.name": {"type": "int", "low": 1, "high": 4}}},
     "`parameters.loss.name` has type int, but the config field loss.name holds str; use type float or categorical."),
    ({"parameters": {"optim.epochs": {"type": "int", "low": 1.5, "high": 4}}},
     "`parameters.optim.epochs.low` must be an int, but got parameters.optim.epochs.low=1.5."),
    ({"parameters": {"loss.name": {"type": "categorical", "choices": []}}},
     "`parameters.loss.name.choices` must be a non-empty list, but got parameters.loss.name.choices=[]."),
    ({"parameters": {"loss.name": {"type": "categorical", "choices": ["focal", "focall"]}}},
     "`parameters.loss.name` can take 'focall', which is not one of bce, bce_topk, combined_focal, focal, "
     "weighted_bce. Did you mean 'focal'?"),
    ({"parameters": {"optim.precision": {"type": "categorical", "choices": ["fp32", "fp8"]}}},
     "`parameters.optim.precision` can take 'fp8', which the experiment config rejects: `optim.precision` must be "
     "auto, fp32, bf16 or fp16, but got optim.precision='fp8'."),
    ({"parameters": {"loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.nam": "focal"}}}},
     "`parameters.loss.gamma.when.loss.nam`: unknown config key 'loss.nam'. Did you mean 'loss.name'?"),
    ({"parameters": {"loss.name": {"type": "categorical", "choices": ["focal", "weighted_bce"]},
                     "loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.name": "focla"}}}},
     "`parameters.loss.gamma.when.loss.name` must be among the choices of parameters.loss.name (focal, weighted_bce), "
     "but got 'focla'. Did you mean 'focal'?"),
    ({"parameters": {"loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.alpha": 1.0}},
                     "loss.alpha": {"type": "float", "low": 1, "high": 2, "when": {"loss.gamma": 1.0}}}},
     "conditions form a cycle: loss.gamma -> loss.alpha -> loss.gamma."),
    ({"num_sample": 4}, "unknown key 'num_sample'. Did you mean 'num_samples'?"),
    ({"num_samples": 0}, "`num_samples` must be at least 1, but got num_samples=0."),
    ({"budget_epochs": 0}, "`budget_epochs` must be at least 1, but got budget_epochs=0."),
    ({"budget_epochs": 2.5}, "`budget_epochs` must be an int"),
    ({"mode": "maximum"}, "`mode` must be one of max, min, but got mode='maximum'."),
    ({"objective": "lst"}, "`objective` must be one of best, last, but got objective='lst'. Did you mean 'last'?"),
    ({"metric": "val_f3"}, "`metric` must be one of the metrics a trial reports (epoch, train_loss, lr, val_f2, "),
    ({"metric": "val_f3"}, "but got metric='val_f3'. Did you mean 'val_f2'?"),
    ({"overrides": {"augment.zoom_max": 0.5}}, "`augment.zoom_max` must be finite and at least zoom_min=1.0"),
    ({"overrides": {"test_time.tta": 2}}, "`test_time.tta` must be one of 1, 4, 8, 16, but got test_time.tta=2."),
    ({"parameters": {"test_time.spacing": {"type": "categorical", "choices": ["fixed", "guess"]}}},
     "`parameters.test_time.spacing` can take 'guess', which the experiment config rejects"),
    ({"overrides": {"validation.unknown_spacing": True, "data.spacing": None}},
     "`validation.unknown_spacing` needs a training spacing (data.spacing)"),
    ({"resources": {"gpu": 2}}, "`resources.gpu` must be at most 1 (a trial trains on one GPU; use fractions such "
                                "as 0.25 to share a card), but got resources.gpu=2."),
    ({"resources": {"cpu": 0}}, "`resources.cpu` must be positive, but got resources.cpu=0.0."),
    ({"resources": {"gpus": 1}}, "unknown key 'resources.gpus'. Did you mean 'resources.gpu'?"),
    ({"scheduler": {"type": "hyperband"}}, "`scheduler.type` must be one of asha, none, but got "
                                            "scheduler.type='hyperband'."),
    ({"scheduler": {"reduction_factor": 1}}, "`scheduler.reduction_factor` must be greater than 1"),
    ({"scheduler": {"max_epochs": 2, "grace_period": 3}}, "`scheduler.grace_period` must not exceed the epochs a "
                                                          "trial trains (2), but got scheduler.grace_period=3."),
    ({"searcher": {"sampler": "tpee"}}, "`searcher.sampler` must be one of tpe, random, cmaes, but got "
                                        "searcher.sampler='tpee'. Did you mean 'tpe'?"),
    ({"overrides": {"optim.l": 0.1}}, "`overrides.optim.l`: unknown config key 'optim.l'. Did you mean 'optim.lr'?"),
    ({"overrides": {"optim.lr": -1}}, "`optim.lr` must be positive, but got optim.lr=-1.0."),
    ({"experiment": "nope.yaml"}, "`experiment` names no file, but got experiment='nope.yaml'"),
    ({"name": "a/b"}, "`name` must be a plain folder name"),
])
def test_bad_space_files_name_file_key_and_value(tmp_path: Path, body: dict, message: str) -> None:
    body = {"storage_path": str(tmp_path / "runs"), **body}
    path = space_file(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_set_override_errors_name_the_override(tmp_path: Path) -> None:
    path = space_file(tmp_path, {"storage_path": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"--set optim.lrate=1: unknown config key 'optim.lrate'. Did you mean"):
        load_space(path, overrides=["optim.lrate=1"])


def test_order_puts_conditions_first() -> None:
    gamma = Parameter("loss.gamma", "float", low=1, high=2, when=(("loss.name", ("focal",)),))
    name = Parameter("loss.name", "categorical", choices=("focal", "weighted_bce"))
    lr = Parameter("optim.lr", "float", low=0.1, high=1)
    assert [p.path for p in order_parameters([gamma, lr, name])] == ["loss.name", "loss.gamma", "optim.lr"]


CONDITIONAL = {
    "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal", "bce_topk", "combined_focal"]},
    "loss.gamma": {"type": "float", "low": 0.5, "high": 4.0, "when": {"loss.name": ["focal", "combined_focal"]}},
    "loss.top_k_fraction": {"type": "float", "low": 0.05, "high": 0.5, "when": {"loss.name": "bce_topk"}},
    "loss.alpha": {"type": "float", "low": 1.0, "high": 3.0, "when": {"loss.name": "combined_focal"}},
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "optim.epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
    "loss.pos_weight": {"value": 7.0, "when": {"loss.name": "weighted_bce"}},
}


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler(seed=1), optuna.samplers.TPESampler(
    seed=1, n_startup_trials=10)])
def test_conditional_parameters_never_sampled_when_false(tmp_path: Path, sampler: optuna.samplers.BaseSampler) -> None:
    space = load(tmp_path, CONDITIONAL)
    define = pickle.loads(pickle.dumps(space.define_by_run()))  # Ray saves the searcher with it
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = set()
    for _ in range(80):
        trial = study.ask()
        fixed = define(trial)
        params = trial.params
        name = params["loss.name"]
        seen.add(name)
        assert ("loss.gamma" in params) == (name in ("focal", "combined_focal"))
        assert ("loss.top_k_fraction" in params) == (name == "bce_topk")
        assert ("loss.alpha" in params) == (name == "combined_focal")
        assert fixed == ({"loss.pos_weight": 7.0} if name == "weighted_bce" else None)
        assert 1e-4 <= params["optim.lr"] <= 1e-2 and params["optim.epochs"] in (2, 4, 6)
        cfg = space.trial_config({**params, **(fixed or {})})
        assert cfg.loss.name == name and cfg.optim.lr == params["optim.lr"]
        study.tell(trial, params["optim.lr"])
    assert seen == {"weighted_bce", "focal", "bce_topk", "combined_focal"}


def test_condition_on_a_base_value(tmp_path: Path) -> None:
    """A condition on a path that is not a parameter reads the base experiment."""
    parameters = {"loss.gamma": {"type": "float", "low": 1, "high": 2, "when": {"loss.name": "focal"}}}
    for loss, expected in (("focal", {"loss.gamma"}), ("weighted_bce", set())):
        space = load(tmp_path, parameters, overrides={"loss.name": loss, "data.cache_dir": str(tmp_path)})
        trial = optuna.create_study().ask()
        space.define_by_run()(trial)
        assert set(trial.params) == expected


@pytest.mark.parametrize(("body", "keys"), [
    ({}, ("best_val_f2", "best_epoch")),
    ({"metric": "val_ap"}, ("best_val_ap", "best_epoch")),
    ({"metric": "val_loss", "mode": "min", "objective": "last"}, ("last_val_loss", "last_epoch")),
])
def test_the_objective_is_read_from_the_space_file(tmp_path: Path, body: dict, keys: tuple) -> None:
    space = load_space(space_file(tmp_path, {"storage_path": str(tmp_path / "runs"), **body}))
    assert (space.objective.value_key, space.objective.epoch_key) == keys
    assert (space.metric, space.mode) == (body.get("metric", "val_f2"), body.get("mode", "max"))
