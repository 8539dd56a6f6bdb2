"""The epoch budget of a search, and the search-efficiency study: its curves, report and a tiny real run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import pytest
import yaml

from motorsearch.evaluation.scoring import score_submission_csv
from motorsearch.search.budget import EpochBudget
from studies.search_efficiency import analysis, study


def report(trial: str, epoch: int, value: float, at: float, arm: str = "random", seed: int = 0) -> dict:
    return {"arm": arm, "seed": seed, "trial": trial, "epoch": epoch, "val_f2": value, "reported_at": at}


def test_epoch_budget_charges_each_trial_its_highest_epoch() -> None:
    budget = EpochBudget(5)
    budget("a", {"epoch": 1})
    budget("b", {"epoch": 1})
    budget("a", {"epoch": 2})
    assert budget.spent == 3 and not budget.stop_all()
    budget("a", {"epoch": 2})  # a restarted trial repeating epoch 2 is not charged twice
    assert budget.spent == 3
    assert budget("b", {"epoch": 3}) is False  # single trials are never stopped by the budget
    assert budget.spent == 5 and budget.stop_all()
    with pytest.raises(ValueError, match="at least 1"):
        EpochBudget(0)


def test_budget_curve_orders_by_report_time_and_stops_at_the_budget() -> None:
    reports = [  # two concurrent trials; listed out of time order on purpose
        report("b", 1, 0.6, at=2.0),
        report("a", 1, 0.4, at=1.0),
        report("a", 2, 0.5, at=3.0),
        report("b", 2, 0.9, at=4.0),
        report("c", 1, 1.0, at=5.0),  # the 5th trial-epoch: past a budget of 4
    ]
    assert analysis.budget_curve(reports, 4) == [0.4, 0.6, 0.6, 0.9]
    assert analysis.budget_curve(reports, 5) == [0.4, 0.6, 0.6, 0.9, 1.0]
    assert analysis.spent_epochs(reports) == 5
    late = analysis.budget_curve([report("a", 2, 0.7, at=1.0)], 3)  # first report at epoch 2 (a resumed trial)
    assert math.isnan(late[0]) and late[1:] == [0.7, 0.7]


def test_first_reach_and_paired_reach_fractions() -> None:
    assert analysis.first_reach([0.2, 0.5, 0.5, 0.8], 0.5) == 0.5
    assert analysis.first_reach([math.nan, 0.9, 0.9, 0.9], 0.95) is None
    curves = {"random": {0: [0.1, 0.3, 0.6, 0.7], 1: [0.5, 0.5, 0.5, 0.5]},
              "tpe_asha": {0: [0.2, 0.7, 0.7, 0.9], 1: [0.4, 0.4, 0.4, 0.4]}}
    assert analysis.reach_fractions(curves) == {0: 0.5, 1: None}


def test_spread_and_summary_rows() -> None:
    assert analysis.spread([0.5, math.nan, 0.7, 0.6]) == (0.6, 0.5, 0.7)
    assert all(math.isnan(v) for v in analysis.spread([math.nan]))
    curves = {"defaults": {0: [0.3, 0.4, 0.4, 0.4], 1: [0.2, 0.2, 0.5, 0.5]}}
    outcomes = [{"arm": "defaults", "seed": s, "test_f2": f, "trials": 1, "wall_s": 60.0} for s, f in [(0, 0.5), (1, 0.7)]]
    (row,) = analysis.summary(outcomes, curves)
    assert row["val_0.25"] == pytest.approx((0.25, 0.2, 0.3))  # after 1 of 4 trial-epochs
    assert row["val_0.5"] == pytest.approx((0.3, 0.2, 0.4))
    assert row["val_1"] == pytest.approx((0.45, 0.4, 0.5))
    assert row["test_f2"] == (0.6, 0.5, 0.7) and row["wall_min"] == (1.0, 1.0, 1.0)


def test_report_states_reach_fraction_and_gain_over_defaults(tmp_path: Path) -> None:
    budget = 4
    curves = {"defaults": {0: [0.3] * 4, 1: [0.4] * 4},
              "random": {0: [0.2, 0.5, 0.6, 0.6], 1: [0.3, 0.3, 0.7, 0.8]},
              "tpe_asha": {0: [0.6, 0.6, 0.9, 0.9], 1: [0.5, 0.8, 0.8, 0.8]}}
    tests = {"defaults": (0.50, 0.60), "random": (0.70, 0.80), "tpe_asha": (0.80, 0.90)}
    outcomes = [{"arm": arm, "seed": seed, "budget": budget, "test_f2": tests[arm][seed], "trials": 3, "wall_s": 30.0}
                for arm in tests for seed in (0, 1)]
    reports = [report(f"{arm}{seed}", epoch, curves[arm][seed][epoch - 1], at=epoch, arm=arm, seed=seed)
               for arm in curves for seed in (0, 1) for epoch in range(1, budget + 1)]
    with open(tmp_path / study.OUTCOMES_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=study.OUTCOME_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(outcomes)
    with open(tmp_path / study.REPORTS_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=study.REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(reports)

    analysis.write_all(tmp_path, command="python -m studies.search_efficiency.study --budget 4")

    text = (tmp_path / analysis.REPORT_MD).read_text()
    # seed 0: random ends at 0.6, TPE+ASHA has 0.6 after 1 of 4 (25%); seed 1: 0.8 after 2 of 4 (50%)
    assert "median of **38%** of the budget (seed 0: 25%, seed 1: 50%)" in text
    assert "random search's final best was reached: random search at 88%" in text  # seeds: 75% and 100%
    assert "TPE + ASHA: test F2 0.850 against the defaults' 0.550 (median), a gain of **+0.300**" in text
    assert "| random search | 0.250 [0.200-0.300] | 0.400 [0.300-0.500] | 0.700 [0.600-0.800] | 0.750 [0.700-0.800] |" in text
    assert "--budget 4" in text
    with open(tmp_path / analysis.CURVES_CSV, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["arm"] == "tpe_asha"]
    assert [float(r["median"]) for r in rows] == pytest.approx([0.55, 0.7, 0.85, 0.85])
    assert [float(r["min"]) for r in rows] == [0.5, 0.6, 0.8, 0.8]
    image = matplotlib.image.imread(tmp_path / analysis.PLOT_PNG)
    assert image.shape[0] > 300 and image.shape[1] > 800  # 11 x 4.2 inches at 110 dpi


def test_arm_spaces_differ_only_in_method(tmp_path: Path) -> None:
    spaces = {arm: study.arm_space(arm, 3, budget=30, storage=tmp_path) for arm in study.ARMS}
    assert {arm: (s.searcher.sampler, s.scheduler.type) for arm, s in spaces.items()} == {
        "defaults": ("random", "none"), "random": ("random", "none"), "tpe": ("tpe", "none"),
        "tpe_asha": ("tpe", "asha")}
    assert all(s.budget_epochs == 30 and s.base.optim.seed == 3 and s.searcher.seed == 3 for s in spaces.values())
    assert all(s.max_epochs == 6 for s in spaces.values())
    defaults = spaces["defaults"]
    assert defaults.parameters == [] and defaults.num_samples == 1
    base = defaults.base
    assert (base.loss.name, base.loss.pos_weight, base.target.sigma_a, base.optim.lr, base.optim.backbone_lr_ratio) == (
        "weighted_bce", 10.0, 200.0, 5e-4, 1.0)
    assert {p.path for p in spaces["tpe"].parameters} >= {"optim.lr", "optim.backbone_lr_ratio", "loss.name",
                                                           "loss.pos_weight", "target.sigma_a"}


def tiny_space(tmp_path: Path) -> Path:
    """The study's space over a tiny simulated dataset: trials of seconds."""
    body = yaml.safe_load(study.SPACE.read_text())
    body["experiment"] = str(study.HERE / "base.yaml")
    body["overrides"] = {"data.synthetic.n_train": 9, "data.synthetic.n_test": 3, "data.cache_dir": str(tmp_path / "cache"),
                         "sampling.patch_size": [32, 64, 64], "sampling.patches_per_epoch": 4}
    body["scheduler"]["max_epochs"] = 3
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path: Path, local_ray: None) -> None:
    out = tmp_path / "out"
    space = tiny_space(tmp_path)
    study.run_study(budget=4, seeds=[0], arms=("defaults", "tpe_asha"), out=out, space_file=space)

    outcomes = {row["arm"]: row for row in analysis.read_csv(out / study.OUTCOMES_CSV)}
    reports = analysis.read_csv(out / study.REPORTS_CSV)
    assert set(outcomes) == {"defaults", "tpe_asha"}
    defaults, searched = outcomes["defaults"], outcomes["tpe_asha"]
    assert (int(defaults["trials"]), int(defaults["spent"])) == (1, 3)  # one run of max_epochs, under the budget
    # the budget ends the search (num_samples is 1000): 4 trial-epochs, plus at most one epoch in flight
    assert 4 <= int(searched["spent"]) <= 5 and int(searched["trials"]) >= 2
    for arm, row in outcomes.items():
        mine = [r for r in reports if r["arm"] == arm]
        assert analysis.spent_epochs(mine) == int(row["spent"])
        # the exported trial's best epoch (a finished trial ranks first, so not always the search's maximum)
        assert float(row["best_val_f2"]) == max(float(r["val_f2"]) for r in mine if r["trial"] == row["best_trial"])
        truth = study.arm_space(arm, 0, budget=4, storage=out / "runs", space_file=space).base.data
        from motorsearch.data.sources import synthetic_root

        score = score_submission_csv(synthetic_root(truth) / "test_solution.csv", out / "submissions" / f"{arm}-s0.csv")
        assert float(row["test_f2"]) == pytest.approx(score.f2)

    study.rescore(out, space_file=space)  # the kept checkpoint is the scored model: the same scores again
    again = {row["arm"]: row for row in analysis.read_csv(out / study.OUTCOMES_CSV)}
    assert {arm: again[arm]["test_f2"] for arm in again} == {arm: outcomes[arm]["test_f2"] for arm in outcomes}
    assert {arm: again[arm]["best_epoch"] for arm in again} == {arm: outcomes[arm]["best_epoch"] for arm in outcomes}

    study.run_study(budget=4, seeds=[0], arms=("defaults", "tpe_asha"), out=out, space_file=space)  # all done: no-op
    assert len(analysis.read_csv(out / study.REPORTS_CSV)) == len(reports)
    with pytest.raises(SystemExit, match="budget \\[4\\], not 8"):
        study.run_study(budget=8, seeds=[0], arms=("defaults",), out=out, space_file=space)


def test_v2_report_measures_each_goal_from_the_csvs(tmp_path: Path) -> None:
    from studies.search_efficiency import study_v2

    def v2(trial: str, epoch: int, value: float, at: float, arm: str, seed: int) -> dict:
        return {"arm": arm, "seed": seed, "trial": trial, "epoch": epoch, "val_ap": value, "reported_at": at}

    reports = []
    for seed in (0, 1):
        reports += [v2("r1", 2, 0.5, 1, "random", seed), v2("r1", 4, 0.7, 2, "random", seed),
                    v2("a1", 2, 0.72, 1, "tpe_asha", seed), v2("a1", 4, 0.75, 2, "tpe_asha", seed)]
    study.write_rows(tmp_path / "reports.csv", study_v2.REPORT_COLUMNS, reports)
    f2 = {0: {"random": 0.7, "pick": 0.8, "confirmed": 0.9, "refit": 0.92, "ensemble": 0.95},
          1: {"random": 0.6, "pick": 0.9, "confirmed": 0.84, "refit": 0.88, "ensemble": 0.9}}
    study.write_rows(tmp_path / "models.csv", study_v2.MODEL_COLUMNS, [
        {"seed": s, "model": m, "test_f2": v, "test_precision": 1, "test_recall": 1, "objective": 0.5, "wall_s": 60}
        for s, by_model in f2.items() for m, v in by_model.items()])
    candidates = [  # the fold-0 value ranks them against the held-out F2; the confirmed mean with it
        {"seed": 0, "run_id": "a", "search_rank": 1, "search_value": 0.9, "confirmed_rank": 3, "confirmed_mean": 0.6,
         "confirmed_sd": 0.1, "test_f2": 0.5},
        {"seed": 0, "run_id": "b", "search_rank": 2, "search_value": 0.8, "confirmed_rank": 2, "confirmed_mean": 0.7,
         "confirmed_sd": 0.1, "test_f2": 0.6},
        {"seed": 0, "run_id": "c", "search_rank": 3, "search_value": 0.7, "confirmed_rank": 1, "confirmed_mean": 0.8,
         "confirmed_sd": 0.1, "test_f2": 0.7}]
    study.write_rows(tmp_path / "candidates.csv", study_v2.CANDIDATE_COLUMNS, candidates)
    text = study_v2.report(tmp_path, budget=4, command="python -m studies.search_efficiency.study_v2")
    lines = {line.split(" |")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| pick | 0.850 [0.800–0.900] | 0.800, 0.900 |" in text
    # random's final best 0.7 is matched by TPE + ASHA's first report, after 2 of 4 trial-epochs
    assert "50%, 50% (median 50%) | no |" in lines["| TPE + ASHA reaches random search's final best `best_val_ap` at ≤ 33% of the budget (median)"]
    assert "median 0.850 | yes |" in lines["| the exported pick's held-out F2 ≥ 0.85 (no spacing)"]
    assert "worst seed -0.060 | no |" in text
    assert "+0.050, +0.000 (median +0.025) | yes |" in text
    assert "confirmed +1.00 vs single fold -1.00 | yes |" in text
