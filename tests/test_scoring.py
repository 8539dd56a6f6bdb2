"""The competition's F2 rule on hand-made cases, its CSV reader, and the threshold sweep."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motorsearch.errors import DataError
from motorsearch.evaluation.scoring import (
    average_precision,
    best_threshold,
    f_beta,
    score_predictions,
    score_submission_csv,
)

NONE = np.zeros((0, 3))


def motor(*zyx):
    return np.array([zyx], dtype=float)


def test_the_competition_metric_docstring_example():
    # The public metric's own example: no motor + prediction (FP), a hit 1.7 voxels off (TP),
    # a prediction 606 voxels off at 10 Å (FN only), a missed motor (FN) -> 5 / 14.
    truth = {"0": NONE, "1": motor(250, 250, 250), "2": motor(100, 100, 100), "3": motor(200, 200, 200)}
    predictions = {"0": np.array([100.0, 100, 100]), "1": np.array([251.0, 251, 251]),
                   "2": np.array([600.0, 600, 600]), "3": None}
    score = score_predictions(truth, predictions, dict.fromkeys(truth, 10.0))
    assert (score.tp, score.fp, score.fn) == (1, 1, 2)
    assert score.f2 == pytest.approx(0.3571428571428571)
    assert score.precision == pytest.approx(0.5)
    assert score.recall == pytest.approx(1 / 3)


def test_a_far_prediction_is_a_miss_only_not_also_a_false_alarm():
    score = score_predictions({"a": motor(0, 0, 0)}, {"a": np.array([0.0, 0, 500])}, {"a": 10.0})
    assert (score.tp, score.fp, score.fn) == (0, 0, 1)
    assert score.f2 == 0.0 and score.precision == 0.0 and score.recall == 0.0


@pytest.mark.parametrize(("spacing", "hit"), [(5.0, True), (20.0, False)])
def test_the_radius_is_1000_angstrom_in_the_tomograms_own_voxels(spacing, hit):
    # 60 voxels apart: 300 Å at 5 Å/voxel (radius 200 voxels, a hit), 1200 Å at 20 Å/voxel
    # (radius 50 voxels, a miss).
    score = score_predictions({"a": motor(10, 10, 10)}, {"a": np.array([10.0, 70, 10])}, {"a": spacing})
    assert (score.tp, score.fn) == ((1, 0) if hit else (0, 1))


@pytest.mark.parametrize(("prediction", "hit"), [((0.0, 30.0, 40.0), True), ((0.0, 30.0, 40.01), False)])
def test_a_prediction_exactly_on_the_radius_is_a_hit(prediction, hit):
    # The metric misses only when distance > 1000 / spacing; here 1000 / 20 = 50 = |(0, 30, 40)|.
    score = score_predictions({"a": motor(0, 0, 0)}, {"a": np.array(prediction)}, {"a": 20.0})
    assert score.tp == int(hit)


def test_each_tomogram_uses_its_own_spacing():
    truth = {"fine": motor(0, 0, 0), "coarse": motor(0, 0, 0)}
    predictions = {"fine": np.array([0.0, 0, 80]), "coarse": np.array([0.0, 0, 80])}
    score = score_predictions(truth, predictions, {"fine": 10.0, "coarse": 16.0})  # radii 100 and 62.5
    assert (score.tp, score.fp, score.fn) == (1, 0, 1)


def test_with_several_true_motors_a_prediction_near_any_of_them_is_a_hit():
    truth = {"a": np.array([[0.0, 0, 0], [100, 100, 100]])}
    assert score_predictions(truth, {"a": np.array([101.0, 99, 100])}, {"a": 20.0}).tp == 1
    far = score_predictions(truth, {"a": np.array([50.0, 50, 50])}, {"a": 20.0})  # 86.6 voxels from both, radius 50
    assert (far.tp, far.fp, far.fn) == (0, 0, 1)


def test_no_motor_and_no_prediction_is_ignored():
    truth = {"hit": motor(5, 5, 5), "empty": NONE}
    alone = score_predictions({"hit": motor(5, 5, 5)}, {"hit": np.array([5.0, 5, 5])}, {"hit": 10.0})
    both = score_predictions(truth, {"hit": np.array([5.0, 5, 5]), "empty": None}, dict.fromkeys(truth, 10.0))
    assert alone == both
    assert both.f2 == 1.0


@pytest.mark.parametrize(("tp", "fp", "fn", "beta", "expected"), [
    (3, 2, 1, 2.0, 15 / 21),   # 5*3 / (5*3 + 4*1 + 2)
    (3, 2, 1, 1.0, 6 / 9),     # 2*3 / (2*3 + 1 + 2)
    (1, 0, 1, 2.0, 5 / 9),
    (1, 4, 0, 2.0, 5 / 9),     # four false alarms cost as much as one miss
    (0, 0, 0, 2.0, 0.0),       # 0/0 is 0.0, as the competition (sklearn, zero_division=0)
    (0, 3, 0, 2.0, 0.0),
])
def test_f_beta_arithmetic(tp, fp, fn, beta, expected):
    assert f_beta(tp, fp, fn, beta=beta).f2 == pytest.approx(expected)


def test_empty_cases_score_zero():
    assert score_predictions({}, {}, {}).f2 == 0.0
    only_negative = score_predictions({"a": NONE}, {"a": None}, {"a": 10.0})
    assert (only_negative.f2, only_negative.tp, only_negative.fp, only_negative.fn) == (0.0, 0, 0, 0)
    false_alarm = score_predictions({"a": NONE}, {"a": np.zeros(3)}, {"a": 10.0})
    assert (false_alarm.f2, false_alarm.fp) == (0.0, 1)


def test_mismatched_tomograms_are_a_programming_error():
    with pytest.raises(ValueError, match="missing"):
        score_predictions({"a": NONE, "b": NONE}, {"a": None}, {"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match="spacing must be positive"):
        score_predictions({"a": NONE}, {"a": None}, {"a": 0.0})


# ---------------------------------------------------------------------------------------------
# CSV files

SOLUTION = """row_id,tomo_id,Motor axis 0,Motor axis 1,Motor axis 2,Array shape (axis 0),Array shape (axis 1),Array shape (axis 2),Voxel spacing,Number of motors
0,tomo_a,100,200,300,300,960,928,10.0,1
1,tomo_b,-1,-1,-1,300,960,928,13.1,0
2,tomo_c,50,60,70,300,960,928,20.0,2
3,tomo_c,250,260,270,300,960,928,20.0,2
4,tomo_d,10,10,10,300,960,928,16.0,1
5,tomo_e,-1,-1,-1,300,960,928,16.0,0
"""


def write(path, text):
    path.write_text(text)
    return path


def test_submission_csv_is_scored_like_the_competition(tmp_path):
    solution = write(tmp_path / "solution.csv", SOLUTION)
    submission = write(tmp_path / "submission.csv", "\n".join([
        "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2",
        "tomo_a,100,200,390",    # 90 voxels at 10 Å: within 100 -> TP
        "tomo_b,5,5,5",          # no motor -> FP
        "tomo_c,250,260,300",    # 30 voxels from the 2nd motor, radius 50 -> TP
        "tomo_d,-1,10,10",       # any -1 means "no motor" -> FN
        "tomo_e,-1,-1,-1",       # ignored
    ]) + "\n")
    score = score_submission_csv(solution, submission)
    assert (score.tp, score.fp, score.fn) == (2, 1, 1)
    assert score.f2 == pytest.approx(10 / (10 + 4 + 1))


def test_submission_row_order_does_not_matter(tmp_path):
    solution = write(tmp_path / "solution.csv", SOLUTION)
    rows = ["tomo_e,-1,-1,-1", "tomo_d,10,10,10", "tomo_c,50,60,70", "tomo_b,-1,-1,-1", "tomo_a,100,200,300"]
    submission = write(tmp_path / "s.csv", "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\n" + "\n".join(rows))
    assert score_submission_csv(solution, submission).f2 == 1.0


@pytest.mark.parametrize(("body", "message"), [
    ("tomo_a,100,abc,300\n", r"s\.csv, line 2, column 'Motor axis 1': must be a finite number, but got 'abc'"),
    ("tomo_a,100,,300\n", r"line 2, column 'Motor axis 1'"),
    ("tomo_a,100,200,nan\n", r"column 'Motor axis 2'"),
    ("tomo_a,1,2\n", r"line 2: expected 4 fields"),
    ("tomo_a,1,2,3\ntomo_a,1,2,3\n", r"line 3, column 'tomo_id'.*appears again"),
])
def test_bad_submission_rows_name_file_line_and_column(tmp_path, body, message):
    solution = write(tmp_path / "solution.csv", "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2,Voxel spacing\n"
                                                "tomo_a,1,2,3,10\n")
    submission = write(tmp_path / "s.csv", "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\n" + body)
    with pytest.raises(DataError, match=message):
        score_submission_csv(solution, submission)


def test_missing_and_unknown_tomograms_are_data_errors(tmp_path):
    solution = write(tmp_path / "solution.csv", SOLUTION)
    header = "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\n"
    partial = write(tmp_path / "partial.csv", header + "tomo_a,1,2,3\ntomo_b,-1,-1,-1\n")
    with pytest.raises(DataError, match=r"partial\.csv: no row for 3 tomo_id\(s\).*tomo_c, tomo_d, tomo_e"):
        score_submission_csv(solution, partial)
    rows = "".join(f"{t},-1,-1,-1\n" for t in ("tomo_a", "tomo_b", "tomo_c", "tomo_d", "tomo_e", "tomo_z"))
    extra = write(tmp_path / "extra.csv", header + rows)
    with pytest.raises(DataError, match=r"1 tomo_id\(s\) not in .*solution\.csv: tomo_z"):
        score_submission_csv(solution, extra)


@pytest.mark.parametrize(("solution_text", "message"), [
    ("tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\ntomo_a,1,2,3\n", r"line 1: missing column\(s\) 'Voxel spacing'"),
    ("tomo_id,Motor axis 0,Motor axis 1,Motor axis 2,Voxel spacing\ntomo_a,1,2,3,-4\n",
     r"line 2, column 'Voxel spacing': must be positive, but got Voxel spacing=-4.0"),
    ("tomo_id,Motor axis 0,Motor axis 1,Motor axis 2,Voxel spacing\ntomo_a,1,2,3,10\ntomo_a,4,5,6,12\n",
     r"line 3, column 'Voxel spacing': must be the same on every row"),
])
def test_bad_solution_files_are_data_errors(tmp_path, solution_text, message):
    solution = write(tmp_path / "solution.csv", solution_text)
    submission = write(tmp_path / "s.csv", "tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\ntomo_a,1,2,3\n")
    with pytest.raises(DataError, match=message):
        score_submission_csv(solution, submission)


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        score_submission_csv(tmp_path / "nope.csv", tmp_path / "nope2.csv")


# ---------------------------------------------------------------------------------------------
# Threshold sweep


def test_best_threshold_picks_the_hand_computed_optimum():
    truth = {"A": motor(0, 0, 0), "B": motor(0, 0, 0), "C": NONE, "D": motor(0, 0, 0), "E": NONE,
             "F": motor(0, 0, 0)}
    near, far = np.array([0.0, 0, 1]), np.array([0.0, 0, 500])
    candidates = {"A": (near, 0.9), "B": (far, 0.8), "C": (near, 0.7), "D": (near, 0.4), "E": (near, 0.3),
                  "F": None}
    # 4 positives. t=0.9: TP1 FN3 -> 5/17; 0.8: same (B is a far miss); 0.7: +FP -> 5/18;
    # 0.4: TP2 FP1 FN2 -> 10/19 (best); 0.3: TP2 FP2 FN2 -> 10/20; inf: 0.
    threshold, score = best_threshold(truth, candidates, dict.fromkeys(truth, 10.0))
    assert threshold == 0.4
    assert (score.tp, score.fp, score.fn) == (2, 1, 2)
    assert score.f2 == pytest.approx(10 / 19)


def test_on_a_tie_the_highest_threshold_wins():
    truth = {"A": motor(0, 0, 0), "B": motor(0, 0, 0)}
    candidates = {"A": (np.zeros(3), 0.9), "B": (np.array([0.0, 0, 999]), 0.5)}  # B is a far miss
    threshold, score = best_threshold(truth, candidates, dict.fromkeys(truth, 10.0))
    assert threshold == 0.9 and score.f2 == pytest.approx(5 / 9)


def test_predicting_nothing_is_a_candidate_rule():
    truth = {"A": NONE, "B": NONE}
    threshold, score = best_threshold(truth, {"A": (np.zeros(3), 0.9), "B": None}, dict.fromkeys(truth, 10.0))
    assert threshold == math.inf
    assert (score.f2, score.tp, score.fp, score.fn) == (0.0, 0, 0, 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["none", "near", "far"]),
                          st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 0.9])), min_size=1, max_size=12))
def test_best_threshold_agrees_with_scoring_every_threshold(rows):
    truth, candidates = {}, {}
    for i, (positive, kind, score) in enumerate(rows):
        truth[str(i)] = motor(0, 0, 0) if positive else NONE
        offset = {"near": 3.0, "far": 300.0}.get(kind)
        candidates[str(i)] = None if offset is None else (np.array([0.0, 0.0, offset]), score)
    spacing = dict.fromkeys(truth, 10.0)

    def score_at(t):
        predictions = {k: (c[0] if c is not None and c[1] >= t else None) for k, c in candidates.items()}
        return score_predictions(truth, predictions, spacing).f2

    thresholds = sorted({c[1] for c in candidates.values() if c is not None} | {math.inf}, reverse=True)
    best_f2 = max(score_at(t) for t in thresholds)
    threshold, score = best_threshold(truth, candidates, spacing)
    assert score.f2 == pytest.approx(best_f2)
    assert threshold == next(t for t in thresholds if score_at(t) == pytest.approx(best_f2))


def ap_case():
    """A hit (0.9), a false alarm (0.8), a hit (0.7), a far candidate on a motor tomogram (0.6), at 10 Å."""
    truth = {"a": np.array([[10.0, 10, 10]]), "b": np.zeros((0, 3)), "c": np.array([[50.0, 50, 50]]),
             "d": np.array([[20.0, 20, 20]])}
    candidates = {"a": (np.array([12.0, 10, 10]), 0.9), "b": (np.array([5.0, 5, 5]), 0.8),
                  "c": (np.array([50.0, 55, 50]), 0.7), "d": (np.array([20.0, 20, 200]), 0.6)}
    return truth, candidates, dict.fromkeys(truth, 10.0)


def test_average_precision_by_hand():
    truth, candidates, spacing = ap_case()
    # recall 1/3 at precision 1, then 2/3 at precision 2/3; the far candidate adds recall to nobody
    assert average_precision(truth, candidates, spacing) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    # above recall 0.5 only: (2/3 - 1/2) at precision 2/3, over 1 - 0.5
    assert average_precision(truth, candidates, spacing, recall_floor=0.5) == pytest.approx((1 / 6) * (2 / 3) / 0.5)


def test_average_precision_ranks_not_thresholds():
    truth, candidates, spacing = ap_case()
    squashed = {k: (c, 0.5 + s / 100) for k, (c, s) in candidates.items()}  # same order, other scale
    assert average_precision(truth, squashed, spacing) == average_precision(truth, candidates, spacing)
    swapped = {**candidates, "b": (candidates["b"][0], 0.95)}  # the false alarm now ranks first
    assert average_precision(truth, swapped, spacing) == pytest.approx(0.5 * 1 / 3 + (2 / 3) * 1 / 3)


def test_average_precision_edge_cases():
    truth, candidates, spacing = ap_case()
    tied = {**candidates, "b": (candidates["b"][0], 0.9)}  # a hit and a false alarm at the same score
    assert average_precision(truth, tied, spacing) == pytest.approx(1 / 3 * 1 / 2 + 1 / 3 * 2 / 3)
    no_motor = {"b": np.zeros((0, 3))}
    assert average_precision(no_motor, {"b": candidates["b"]}, {"b": 10.0}) == 0.0
    perfect = {k: candidates[k] for k in ("a", "c")}
    assert average_precision({k: truth[k] for k in perfect}, perfect, {k: 10.0 for k in perfect}) == 1.0
    with pytest.raises(ValueError, match="`recall_floor` must be in \\[0, 1\\), but got recall_floor=1.0."):
        average_precision(truth, candidates, spacing, recall_floor=1.0)
