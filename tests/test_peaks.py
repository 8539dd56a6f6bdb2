"""Peak picking: the output-to-input convention, sub-voxel refinement and greedy NMS."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motorsearch.data.targets import heatmap
from motorsearch.evaluation.peaks import find_peaks


@pytest.mark.parametrize("stride", [1, 2, 8, 16])
def test_a_lone_voxel_maps_to_its_output_voxel_centre(stride):
    prob = np.zeros((4, 5, 6), dtype=np.float32)
    prob[2, 3, 4] = 0.7
    [(coords, score)] = find_peaks(prob, stride=stride, nms_radius_vox=0.0)
    expected = stride * np.array([2, 3, 4]) + (stride - 1) / 2
    np.testing.assert_allclose(coords, expected)
    assert score == pytest.approx(0.7)


@settings(max_examples=60, deadline=None)
@given(
    stride=st.sampled_from([2, 4, 8, 16]),
    sigma_out=st.floats(0.6, 2.5),
    fraction=st.tuples(*[st.floats(0.0, 1.0)] * 3),
)
def test_refinement_recovers_a_gaussian_centre_to_a_small_fraction_of_a_voxel(stride, sigma_out, fraction):
    out_shape = (7, 9, 8)
    # anywhere from the second to the second-to-last output voxel centre, so each axis has neighbours
    lo = np.array([stride + (stride - 1) / 2] * 3)
    hi = np.array([stride * (n - 2) + (stride - 1) / 2 for n in out_shape])
    centre = lo + np.array(fraction) * (hi - lo)
    prob = heatmap(centre[None], (0, 0, 0), out_shape, stride, sigma_out * stride)
    [(coords, score)] = find_peaks(prob, stride=stride, nms_radius_vox=1000.0)
    np.testing.assert_allclose(coords, centre, atol=0.01 * stride)
    assert score == pytest.approx(prob.max())


def test_refinement_is_clipped_to_half_a_voxel_and_skipped_on_borders():
    prob = np.zeros((3, 3, 3), dtype=np.float32)
    prob[1, 1, 1] = 1.0
    prob[1, 1, 2] = 1.0 - 1e-6  # nearly flat towards +x: the raw fit would say ~+0.5 and no further
    prob[0, 1, 1] = 0.5         # z is also refined; y has zero neighbours on both sides -> unchanged
    [(coords, _)] = find_peaks(prob, stride=1, nms_radius_vox=0.0)
    assert 0.49 < coords[2] - 1 <= 0.5
    assert coords[0] < 1 and coords[1] == 1.0
    border = np.zeros((3, 3, 3), dtype=np.float32)
    border[0, 0, 0], border[1, 0, 0] = 1.0, 0.9
    [(coords, _)] = find_peaks(border, stride=1, nms_radius_vox=0.0)
    np.testing.assert_array_equal(coords, [0.0, 0.0, 0.0])  # on the border along every axis


def line_of_peaks(values: dict[int, float]) -> np.ndarray:
    prob = np.zeros((1, 1, 20), dtype=np.float32)
    for index, value in values.items():
        prob[0, 0, index] = value
    return prob


@pytest.mark.parametrize(("radius", "expected_x"), [
    (12.0, [5, 14]),    # 8 is 3 output voxels = 12 input voxels from 5: suppressed (inclusive); 14 is 36 away
    (11.9, [5, 8, 14]),  # just beyond the radius: kept
    (24.0, [5, 14]),     # 14 is 24 input voxels from 8, but 8 was already suppressed by 5
])
def test_nms_suppresses_within_the_radius_and_keeps_beyond(radius, expected_x):
    prob = line_of_peaks({5: 0.9, 8: 0.8, 14: 0.3})
    peaks = find_peaks(prob, stride=4, max_peaks=3, nms_radius_vox=radius, min_score=0.2)
    xs = [round((coords[2] - 1.5) / 4) for coords, _ in peaks]
    assert xs == expected_x


def test_peaks_come_strongest_first_and_stop_at_max_peaks_and_min_score():
    prob = line_of_peaks({2: 0.3, 10: 0.9, 17: 0.6})
    peaks = find_peaks(prob, stride=1, max_peaks=5, nms_radius_vox=1.0, min_score=0.5)
    assert [score for _, score in peaks] == pytest.approx([0.9, 0.6])
    assert len(find_peaks(prob, stride=1, max_peaks=1, nms_radius_vox=1.0)) == 1
    assert find_peaks(np.zeros((2, 2, 2)), stride=1, nms_radius_vox=1.0, min_score=0.5) == []


def test_suppression_covers_a_ball_not_a_box():
    prob = np.zeros((1, 9, 9), dtype=np.float32)
    prob[0, 4, 4] = 1.0
    prob[0, 7, 7] = 0.5  # 3*sqrt(2) = 4.24 output voxels away diagonally, inside a radius-4 box
    peaks = find_peaks(prob, stride=1, max_peaks=2, nms_radius_vox=4.0)
    assert len(peaks) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prob": np.zeros((2, 2)), "stride": 1, "nms_radius_vox": 1.0}, "shape"),
    ({"prob": np.zeros((2, 2, 2)), "stride": 0, "nms_radius_vox": 1.0}, "stride"),
    ({"prob": np.zeros((2, 2, 2)), "stride": 1, "nms_radius_vox": -1.0}, "nms_radius_vox"),
    ({"prob": np.zeros((2, 2, 2)), "stride": 1, "nms_radius_vox": 1.0, "max_peaks": 0}, "max_peaks"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_peaks(**kwargs)
