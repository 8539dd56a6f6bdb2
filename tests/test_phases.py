"""The stem and first block on the 2×2×2 phase layout give the direct path's numbers (model.phases)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motorsearch.config import ModelConfig
from motorsearch.evaluation.inference import predict_volume
from motorsearch.model import build_model, phases
from motorsearch.model.blocks import PreActResBlock3d, downsample2

pytestmark = pytest.mark.usefixtures("one_thread")


def test_to_phases_by_hand():
    x = torch.arange(8.0).reshape(1, 1, 2, 2, 2)  # voxel (z, y, x) holds 4z + 2y + x
    assert phases.to_phases(x).flatten().tolist() == list(range(8))  # channel 4pz + 2py + px
    two = torch.stack([x[0, 0], 10 + x[0, 0]])[None]  # channel c's phases come as a block of 8
    assert phases.to_phases(two).flatten().tolist() == [*range(8), *range(10, 18)]
    assert torch.equal(phases.mean_of_phases(phases.to_phases(two)), downsample2(two))


@pytest.mark.parametrize(("kernel", "in_channels", "expected_kernel"), [(5, 1, 3), (3, 2, 3), (7, 1, 5)])
def test_a_convolution_on_phases_is_the_convolution(kernel, in_channels, expected_kernel):
    torch.manual_seed(0)
    x = torch.randn(2, in_channels, 6, 8, 10)
    weight = torch.randn(3, in_channels, kernel, kernel, kernel)
    phase_weight, padding = phases.phase_conv_weight(weight)
    assert phase_weight.shape == (24, 8 * in_channels, expected_kernel, expected_kernel, expected_kernel)
    on_phases = F.conv3d(phases.to_phases(x), phase_weight, padding=padding)
    direct = phases.to_phases(F.conv3d(x, weight, padding=kernel // 2))
    torch.testing.assert_close(on_phases, direct, rtol=0, atol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "4m"])
def test_stem_and_first_block_on_phases_match_the_direct_path_with_gradients(preset):
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset))
    stem, block = model.stem, model.encoder[0][0]
    x = torch.randn(2, 1, 16, 32, 48)
    assert phases.applies(stem, block, x)
    direct = block(stem(x))
    (direct ** 2).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    on_phases = phases.stem_and_first_block(x, stem, block)
    torch.testing.assert_close(on_phases, direct, rtol=0, atol=1e-5)
    (on_phases ** 2).sum().backward()
    assert expected
    for name, grad in expected.items():
        scale = float(grad.abs().max())  # float rounding of sums in another order: relative to the largest
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=0, atol=1e-5 * scale,
                                   msg=name)


def test_the_phase_path_is_taken_only_where_it_is_exact():
    model = build_model(ModelConfig(preset="tiny"))
    stem, block = model.stem, model.encoder[0][0]
    assert phases.applies(stem, block, torch.zeros(1, 1, 16, 16, 16))
    assert not phases.applies(stem, block, torch.zeros(1, 1, 16, 16, 15))  # odd size
    assert not phases.applies(stem, block, torch.zeros(1, 1, 16, 16, 16, device="meta"))  # not a CPU
    assert not phases.applies(stem, model.encoder[0][1] if len(model.encoder[0]) > 1 else
                              PreActResBlock3d(4, 4), torch.zeros(1, 1, 16, 16, 16))  # no down-sampling
    assert not phases.applies(stem, PreActResBlock3d(4, 8, downsample=True, norm="instance"), torch.zeros(1, 1, 16, 16, 16))


def test_sliding_window_predictions_are_those_of_the_direct_path(monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny")).eval()
    volume = np.random.default_rng(0).standard_normal((40, 70, 90), dtype=np.float32)
    kwargs = dict(patch_size=(32, 64, 64), stride=16, overlap=0.5, batch_size=2, device="cpu")
    fast = predict_volume(model, volume, **kwargs)
    monkeypatch.setattr(phases, "applies", lambda *args: False)  # the direct path, as before model.phases
    direct = predict_volume(model, volume, **kwargs)
    assert fast.shape == direct.shape == (3, 5, 6)
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-6)
    assert np.abs(direct).max() > 0.001
