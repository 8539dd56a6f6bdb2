"""Sliding-window stitching keeps the output grid aligned with the stride convention.

The models here are real, fixed networks: average pooling by the stride maps every output
voxel to the mean of exactly its own stride³ cell, so the whole-volume forward is the ground
truth, and a window that started off the output grid would blend shifted cells into it.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motorsearch.config import ModelConfig
from motorsearch.evaluation.inference import predict_logits, predict_volume, window_steps
from motorsearch.evaluation.peaks import find_peaks
from motorsearch.model import build_model

torch.set_num_threads(1)


class PoolModel(torch.nn.Module):
    """(B, 1, D, H, W) -> (B, 1, D/s, H/s, W/s): ``scale * avg_pool(x, s) + bias``."""

    def __init__(self, stride: int, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.stride, self.scale, self.bias = stride, scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.avg_pool3d(x, self.stride) + self.bias


class LogitOfPoolModel(torch.nn.Module):
    """Logits whose sigmoid is ``0.9 * avg_pool(x, s)``: a pooled Gaussian blob comes out as a heatmap."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(0.9 * F.avg_pool3d(x, self.stride), eps=1e-6)


def whole_volume_pool(volume: np.ndarray, stride: int, padded_shape: tuple[int, int, int]) -> np.ndarray:
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[: volume.shape[0], : volume.shape[1], : volume.shape[2]] = volume
    pooled = F.avg_pool3d(torch.from_numpy(padded)[None, None], stride)[0, 0].numpy()
    return pooled[tuple(slice(0, -(-n // stride)) for n in volume.shape)]


@pytest.mark.parametrize(("shape", "patch", "stride", "overlap"), [
    ((37, 50, 43), (16, 24, 24), 8, 0.5),   # a step of 12 would leave the stride-8 grid
    ((40, 64, 56), (24, 24, 24), 8, 0.5),
    ((33, 29, 47), (8, 12, 16), 4, 0.25),
    ((20, 20, 20), (32, 32, 32), 16, 0.5),  # volume smaller than one window
    ((64, 48, 48), (32, 32, 32), 16, 0.0),
])
def test_stitched_output_equals_the_whole_volume_forward(shape, patch, stride, overlap):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = predict_logits(PoolModel(stride), volume, patch_size=patch, stride=stride, overlap=overlap,
                         batch_size=3, device="cpu")
    assert out.shape == tuple(-(-n // stride) for n in shape) and out.dtype == np.float32
    padded_shape = tuple(max(-(-n // stride) * stride, p) for n, p in zip(shape, patch, strict=True))
    np.testing.assert_allclose(out, whole_volume_pool(volume, stride, padded_shape), atol=1e-5)


def test_a_bright_blob_comes_out_at_its_output_voxel_and_back_at_its_input_position():
    stride, centre = 4, np.array([21.3, 30.6, 12.2])
    grid = np.indices((40, 52, 36)).astype(np.float64)
    volume = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) / (2 * 3.0**2)).astype(np.float32)
    prob = predict_volume(LogitOfPoolModel(stride), volume, patch_size=(16, 16, 16),
                          stride=stride, overlap=0.5, batch_size=4, device="cpu")
    assert prob.shape == (10, 13, 9)
    assert np.unravel_index(prob.argmax(), prob.shape) == tuple(np.floor((centre + 0.5) / stride).astype(int))
    [(coords, score)] = find_peaks(prob, stride=stride, nms_radius_vox=50.0)
    np.testing.assert_allclose(coords, centre, atol=0.1)  # a box-blurred Gaussian is nearly Gaussian
    assert 0.5 < score < 0.9


@pytest.mark.parametrize(("patch", "stride", "overlap", "expected"), [
    ((24, 64, 96), 8, 0.5, (8, 32, 48)),
    ((48, 48, 48), 16, 0.5, (16, 16, 16)),  # 24 rounds down to 16: at least the asked overlap
    ((16, 16, 16), 16, 0.9, (16, 16, 16)),  # never below one stride
    ((160, 288, 288), 16, 0.5, (80, 144, 144)),
    ((64, 64, 64), 16, 0.0, (64, 64, 64)),
])
def test_window_steps_are_multiples_of_the_stride(patch, stride, overlap, expected):
    assert window_steps(patch, stride, overlap) == expected


def test_logits_are_blended_and_the_sigmoid_applied_once():
    volume = np.random.default_rng(1).normal(size=(24, 24, 24)).astype(np.float32)
    kwargs = dict(patch_size=(16, 16, 16), stride=8, overlap=0.5, batch_size=2, device="cpu")
    logits = predict_logits(PoolModel(8, scale=3.0), volume, **kwargs)
    prob = predict_volume(PoolModel(8, scale=3.0), volume, **kwargs)
    np.testing.assert_allclose(prob, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)


def test_the_models_training_mode_is_restored():
    model = PoolModel(4).train()
    predict_volume(model, np.zeros((8, 8, 8), np.float32), patch_size=(8, 8, 8), stride=4, overlap=0.5,
                   batch_size=1, device="cpu")
    assert model.training


def test_a_model_with_the_wrong_output_stride_is_rejected():
    with pytest.raises(ValueError, match=r"\(B, 1, \*\(8, 8, 8\)\) window to \(B, 1, \*\(2, 2, 2\)\).*\(1, 1, 4, 4, 4\)"):
        predict_volume(PoolModel(2), np.zeros((8, 8, 8), np.float32), patch_size=(8, 8, 8), stride=4,
                       overlap=0.5, batch_size=1, device="cpu")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patch_size": (12, 16, 16)}, "patch_size must be 3 multiples of stride=8"),
    ({"patch_size": (16, 16)}, "patch_size"),
    ({"overlap": 1.0}, "overlap must be in"),
    ({"batch_size": 0}, "batch_size"),
    ({"precision": "fp8"}, "precision"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    arguments = dict(patch_size=(16, 16, 16), stride=8, overlap=0.5, batch_size=1, device="cpu") | kwargs
    with pytest.raises(ValueError, match=message):
        predict_volume(PoolModel(8), np.zeros((16, 16, 16), np.float32), **arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_mixed_precision_on_cuda_matches_fp32(precision):
    volume = np.random.default_rng(2).normal(size=(40, 48, 40)).astype(np.float32)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 1, 3, padding=1), torch.nn.AvgPool3d(8)).cuda()
    kwargs = dict(patch_size=(16, 16, 16), stride=8, overlap=0.5, batch_size=2, device="cuda")
    reference = predict_logits(model, volume, precision="fp32", **kwargs)
    mixed = predict_logits(model, volume, precision=precision, **kwargs)
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, reference, atol=2e-2)


class ShiftModel(torch.nn.Module):
    """Not equivariant: each output voxel is its cell's mean plus a ramp along x (a fixed position bias)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool3d(x, self.stride)
        return pooled + torch.arange(pooled.shape[-1], dtype=pooled.dtype)


@pytest.mark.parametrize("tta", [4, 8, 16])
@pytest.mark.parametrize(("shape", "patch", "stride"), [((40, 64, 56), (24, 24, 24), 8), ((33, 29, 47), (8, 12, 16), 4)])
def test_tta_views_are_turned_back_onto_the_same_grid(tta, shape, patch, stride):
    """Pooling commutes with flips and quarter turns on a stride-aligned grid: every view, turned back,
    is the plain output, so the average is too; a misaligned view would blend neighbouring cells."""
    volume = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    plain = predict_logits(PoolModel(stride), volume, patch_size=patch, stride=stride, overlap=0.5, batch_size=4,
                           device="cpu")
    averaged = predict_logits(PoolModel(stride), volume, patch_size=patch, stride=stride, overlap=0.5, batch_size=4,
                              device="cpu", tta=tta)
    np.testing.assert_allclose(averaged, plain, atol=1e-5)


def test_tta_averages_views_a_model_sees_differently():
    """The x ramp of ShiftModel reads reversed in views turned by 2 quarter turns: with 4 views (turns
    0-3 in y-x) the ramp is averaged with its mirror and its transposes, so it no longer rises along x."""
    volume = np.zeros((16, 32, 32), dtype=np.float32)
    plain = predict_logits(ShiftModel(8), volume, patch_size=(16, 32, 32), stride=8, overlap=0.0, batch_size=1,
                           device="cpu")
    averaged = predict_logits(ShiftModel(8), volume, patch_size=(16, 32, 32), stride=8, overlap=0.0, batch_size=1,
                              device="cpu", tta=4)
    np.testing.assert_allclose(plain[0, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(averaged, np.full_like(averaged, 1.5), atol=1e-6)  # the ramp's mean everywhere


def test_unknown_tta_is_rejected():
    with pytest.raises(ValueError, match="`tta` must be one of 1, 4, 8, 16, but got tta=2."):
        predict_logits(PoolModel(4), np.zeros((8, 8, 8), np.float32), patch_size=(8, 8, 8), stride=4, overlap=0.0,
                       batch_size=1, device="cpu", tta=2)


def test_a_single_cpu_window_runs_as_a_batch_of_two_with_the_same_predictions():
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny")).eval()
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, windows):
            seen.append(windows.shape[0])
            return model(windows)

    volume = np.random.default_rng(1).standard_normal((32, 90, 64), dtype=np.float32)  # 2 windows in y only
    kwargs = dict(patch_size=(32, 64, 64), stride=16, overlap=0.5, device="cpu")
    one = predict_volume(Recording(), volume, batch_size=1, **kwargs)
    assert seen == [2, 2]  # each window alone, doubled (PyTorch's batch-1 conv3d path is ~3.5x slower)
    two = predict_volume(model, volume, batch_size=2, **kwargs)
    np.testing.assert_allclose(one, two, rtol=0, atol=1e-6)
