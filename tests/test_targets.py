"""Heatmap targets: hand-worked values, the output-grid convention, sub-voxel peak positions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motorsearch.data.targets import heatmap, output_centres, output_to_input


def fit_peak(target: np.ndarray, stride: int, origin) -> np.ndarray:
    """Motor position (input voxels) from a heatmap: log-parabola through the argmax and its neighbours."""
    index = np.unravel_index(int(np.argmax(target)), target.shape)
    position = []
    for axis in range(3):
        before, after = list(index), list(index)
        before[axis] -= 1
        after[axis] += 1
        low, mid, high = (np.log(float(target[tuple(i)])) for i in (before, index, after))
        offset = 0.5 * (low - high) / (low - 2.0 * mid + high)
        position.append(output_to_input(index[axis] + offset, stride, origin[axis]))
    return np.asarray(position, dtype=np.float64)


@pytest.mark.parametrize(
    "origin, n, stride, expected",
    [
        (0, 3, 16, [7.5, 23.5, 39.5]),
        (5, 2, 16, [12.5, 28.5]),
        (-3, 2, 4, [-1.5, 2.5]),
        (0, 2, 8, [3.5, 11.5]),
    ],
)
def test_output_centres(origin, n, stride, expected):
    np.testing.assert_allclose(output_centres(origin, n, stride), expected)


def test_hand_worked_values():
    sigma = 2.0
    target = heatmap(np.array([[1.5, 1.5, 5.5]]), (0, 0, 0), (1, 1, 3), stride=4, sigma_vox=sigma)
    side = np.exp(-16.0 / (2 * sigma**2))  # neighbours 4 voxels away
    np.testing.assert_allclose(target[0, 0], [side, 1.0, side], rtol=1e-6)
    assert target.dtype == np.float32


def test_origin_not_a_multiple_of_stride_shifts_the_grid():
    # origin 5, stride 16: output voxel 2 of x is centred at 5 + 32 + 7.5 = 44.5
    motor = np.array([[5 + 7.5, 5 + 7.5, 44.5]])
    target = heatmap(motor, (5, 5, 5), (2, 2, 4), stride=16, sigma_vox=8.0)
    assert np.unravel_index(np.argmax(target), target.shape) == (0, 0, 2)
    assert target[0, 0, 2] == pytest.approx(1.0)
    shifted = heatmap(motor - 5, (0, 0, 0), (2, 2, 4), stride=16, sigma_vox=8.0)
    np.testing.assert_allclose(target, shifted, rtol=1e-6)


def test_motors_merge_by_max_and_empty_is_zero():
    motors = np.array([[7.5, 7.5, 7.5], [7.5, 7.5, 39.5]])
    both = heatmap(motors, (0, 0, 0), (1, 1, 3), stride=16, sigma_vox=10.0)
    one = heatmap(motors[:1], (0, 0, 0), (1, 1, 3), stride=16, sigma_vox=10.0)
    other = heatmap(motors[1:], (0, 0, 0), (1, 1, 3), stride=16, sigma_vox=10.0)
    np.testing.assert_array_equal(both, np.maximum(one, other))
    assert both[0, 0, 0] == pytest.approx(1.0) and both[0, 0, 2] == pytest.approx(1.0)
    assert not heatmap(np.zeros((0, 3)), (0, 0, 0), (2, 2, 2), stride=8, sigma_vox=3.0).any()
    with pytest.raises(ValueError, match="sigma_vox"):
        heatmap(motors, (0, 0, 0), (1, 1, 3), stride=16, sigma_vox=0.0)


@settings(max_examples=200, deadline=None)
@given(
    stride=st.sampled_from([8, 16]),
    out_shape=st.tuples(*[st.integers(3, 6)] * 3),
    origin=st.tuples(*[st.integers(-40, 40)] * 3),
    fraction=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    sigma_vox=st.floats(4.0, 30.0),
)
def test_peak_position_is_recovered_to_sub_voxel_precision(stride, out_shape, origin, fraction, sigma_vox):
    # a motor anywhere between the second and the second-to-last output centre, so the argmax is interior
    motor = []
    for axis in range(3):
        centres = output_centres(origin[axis], out_shape[axis], stride)
        motor.append(centres[1] + fraction[axis] * (centres[-2] - centres[1]))
    motor = np.asarray(motor)
    target = heatmap(motor[None], origin, out_shape, stride, sigma_vox)
    np.testing.assert_allclose(fit_peak(target, stride, origin), motor, atol=0.05)
