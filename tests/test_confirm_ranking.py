"""The confirmed ranking's arithmetic and the confirm settings, without Ray (the runs: test_final_model.py)."""

from __future__ import annotations

import math
import statistics

import pytest
import yaml

from motorsearch.errors import ConfigError
from motorsearch.objective import Objective
from motorsearch.search.confirm import Candidate, ConfirmPlan, Job, confirmation_table, parse_folds
from motorsearch.search.space import ConfirmSpec
from motorsearch.search.space_file import load_space


def _plan(values: list[float], *, mode: str = "max", n_folds: int = 3) -> ConfirmPlan:
    candidates = [Candidate(run_id=f"r{i}", trial_id=f"t{i}", name=f"demo #{i}", params={}, fold=0, value=value,
                            config={"data": {"n_folds": n_folds, "fold": 0}}) for i, value in enumerate(values)]
    jobs = [Job(i, fold) for i in range(len(values)) for fold in range(1, n_folds)]
    return ConfirmPlan(experiment_name="demo", experiment_id="1", search_run_id="p", tracking_uri="sqlite://",
                       objective=Objective("val_f2", mode), candidates=candidates, jobs=jobs,
                       resources={"cpu": 1.0}, max_concurrent=None, max_failures=0, storage_path="/tmp", address=None)


def test_the_mean_over_folds_reorders_the_search_ranking():
    plan = _plan([0.9, 0.8, 0.7])  # the search's fold-0 order
    scores = {(0, 1): 0.5, (0, 2): 0.6, (1, 1): 0.8, (1, 2): 0.9, (2, 1): 0.7, (2, 2): 0.7}
    table = confirmation_table(plan, scores)
    assert list(table["trial_id"]) == ["t1", "t2", "t0"]
    assert list(table["confirmed_rank"]) == [1, 2, 3]
    first = table.iloc[0]
    assert first["confirmed_best_val_f2"] == pytest.approx(statistics.mean([0.8, 0.8, 0.9]))
    assert first["confirmed_best_val_f2_std"] == pytest.approx(statistics.stdev([0.8, 0.8, 0.9]))
    assert (first["fold_0"], first["fold_1"], first["fold_2"]) == (0.8, 0.8, 0.9)
    assert first["search_rank"] == 2 and first["confirmed_folds"] == 3


def test_ties_keep_the_search_order_and_min_mode_ranks_low_first():
    tied = confirmation_table(_plan([0.5, 0.5]), {(0, 1): 0.5, (0, 2): 0.5, (1, 1): 0.5, (1, 2): 0.5})
    assert list(tied["trial_id"]) == ["t0", "t1"]
    low = confirmation_table(_plan([0.3, 0.2], mode="min"), {(0, 1): 0.1, (0, 2): 0.1, (1, 1): 0.3, (1, 2): 0.3})
    assert list(low["trial_id"]) == ["t0", "t1"]


def test_a_candidate_that_lost_a_fold_ranks_after_complete_ones():
    table = confirmation_table(_plan([0.9, 0.1]), {(0, 1): 1.0, (0, 2): None, (1, 1): 0.1, (1, 2): 0.1})
    assert list(table["trial_id"]) == ["t1", "t0"]
    lost = table.iloc[1]
    assert lost["confirmed_folds"] == 2 and math.isnan(lost["fold_2"])
    assert lost["confirmed_best_val_f2"] == pytest.approx(0.95)


@pytest.mark.parametrize(("text", "expected"), [("all", None), (None, None), ("ALL", None), ("1,3", [1, 3]),
                                                 (" 2 ", [2]), ([1, 2], [1, 2])])
def test_parse_folds(text, expected):
    assert parse_folds(text) == expected


@pytest.mark.parametrize("text", ["", "1,1", "a", "1,,2", "1.5"])
def test_parse_folds_refuses(text):
    with pytest.raises(ConfigError, match="--folds"):
        parse_folds(text)


def _space(tmp_path, confirm):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"num_samples": 4, "overrides": {"data.n_folds": 3}, "confirm": confirm,
                                    "parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}))
    return path


def test_the_space_file_confirm_section(tmp_path):
    every = load_space(_space(tmp_path, {"top_k": 2, "folds": "all"})).confirm
    assert every == ConfirmSpec(2, "all") and every.fold_list is None
    listed = load_space(_space(tmp_path, {"folds": [1, 2]})).confirm
    assert listed == ConfirmSpec(3, [1, 2]) and listed.fold_list == [1, 2]
    assert load_space(_space(tmp_path, None)).confirm is None


@pytest.mark.parametrize(("confirm", "message"), [
    ({"top_k": 5}, "`confirm.top_k` cannot exceed num_samples=4"),
    ({"top_k": 0}, "`confirm.top_k` must be at least 1"),
    ({"folds": [3]}, "`confirm.folds` must be folds of data.n_folds=3"),
    ({"folds": "some"}, "`confirm.folds` must be all or a list of fold numbers"),
    ({"top": 2}, "unknown key 'confirm.top'"),
    ([2], "`confirm` must be a mapping"),
])
def test_the_confirm_section_refuses(tmp_path, confirm, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_space(_space(tmp_path, confirm))
