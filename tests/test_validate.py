"""Validation end to end on tiny cached tomograms with a fixed, hand-made model."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motorsearch.config import from_dict
from motorsearch.data.cache import CachedTomogram
from motorsearch.data.preprocess import normalize
from motorsearch.data.targets import heatmap
from motorsearch.evaluation.validate import in_top_k, motor_voxels, soft_dice, validate

torch.set_num_threads(1)

STRIDE = 8
SPACING = 50.0  # Å/voxel: the 1000 Å hit radius is 20 voxels
SHAPE = (40, 48, 48)


class BlobDetector(torch.nn.Module):
    """Logits ``4 * avg_pool(x, 8)``: bright cells (above the fixed normalisation's 0.48) light up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 4.0 * F.avg_pool3d(x, STRIDE)


def make_tomogram(tmp_path, tomo_id, *, blob, amplitude, motors, seed, background=60.0):
    """A uint8 volume: dim noisy background, plus a Gaussian blob (sigma 3 voxels) at ``blob``."""
    rng = np.random.default_rng(seed)
    volume = background + rng.normal(0, 3, size=SHAPE)
    if blob is not None:
        grid = np.indices(SHAPE).astype(np.float64)
        volume += amplitude * np.exp(-sum((g - c) ** 2 for g, c in zip(grid, blob, strict=True)) / (2 * 3.0**2))
    path = tmp_path / f"{tomo_id}.npy"
    np.save(path, np.clip(volume, 0, 255).round().astype(np.uint8))
    motors = np.array(motors, dtype=np.float64).reshape(-1, 3)
    return CachedTomogram(tomo_id=tomo_id, shape=SHAPE, spacing=SPACING, original_shape=SHAPE,
                          original_spacing=SPACING, motors=motors, motors_a=motors * SPACING, fold=0, path=path)


def config(**validation):
    return from_dict({"model": {"stride": STRIDE}, "sampling": {"patch_size": [16, 32, 32]},
                      "target": {"sigma_a": 200.0}, "optim": {"precision": "auto"},
                      "validation": {"overlap": 0.5, "window_batch_size": 2, **validation}})


def whole_volume_logits(tomogram):
    """The model on the whole zero-padded volume: what stitching must reproduce for this pooling model."""
    volume = normalize(np.asarray(tomogram.volume()), "fixed")
    padded = np.zeros([-(-n // STRIDE) * STRIDE for n in SHAPE], dtype=np.float32)
    padded[: SHAPE[0], : SHAPE[1], : SHAPE[2]] = volume
    return BlobDetector()(torch.from_numpy(padded)[None, None])


@pytest.fixture
def fold(tmp_path):
    return [
        make_tomogram(tmp_path, "bright", blob=(12.3, 20.6, 30.2), amplitude=190, motors=[(12.3, 20.6, 30.2)], seed=1),
        make_tomogram(tmp_path, "dim", blob=(27.5, 14.1, 17.8), amplitude=150, motors=[(27.5, 14.1, 17.8)], seed=2),
        make_tomogram(tmp_path, "empty", blob=(20.0, 30.0, 10.0), amplitude=90, motors=[], seed=3),
    ]


def test_a_detector_that_finds_every_motor_scores_f2_one_at_the_right_threshold(fold):
    model = BlobDetector().train()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    result = validate(model, fold, cfg=config(), device="cpu", loss_fn=loss_fn)

    assert model.training  # mode restored
    assert set(result.candidates) == {"bright", "dim", "empty"}
    for tomogram in fold[:2]:
        [(coords, score)] = result.candidates[tomogram.tomo_id]
        # within half a stride cell: this detector's heatmap is no Gaussian, so refinement is approximate
        assert np.linalg.norm(coords - tomogram.motors[0]) < STRIDE / 2
    scores = {tomo_id: found[0][1] for tomo_id, found in result.candidates.items()}
    assert scores["bright"] > scores["dim"] > scores["empty"]

    metrics = result.metrics
    assert (metrics["val_f2"], metrics["val_precision"], metrics["val_recall"]) == (1.0, 1.0, 1.0)
    # the highest threshold that keeps both motors and drops the decoy: the dim motor's score
    assert metrics["val_threshold"] == result.threshold == pytest.approx(scores["dim"])
    assert (result.score.tp, result.score.fp, result.score.fn) == (2, 0, 0)
    assert metrics["val_topk_acc"] == 1.0

    expected_loss, expected_dice = [], []
    for tomogram in fold:
        logits = whole_volume_logits(tomogram)
        target = torch.from_numpy(heatmap(tomogram.motors, (0, 0, 0), logits.shape[2:], STRIDE, 200.0 / SPACING))
        expected_loss.append(float(loss_fn(logits, target[None, None])))
        expected_dice.append(soft_dice(torch.sigmoid(logits)[0, 0].numpy(), target.numpy()))
    assert metrics["val_loss"] == pytest.approx(np.mean(expected_loss), rel=1e-5)
    assert metrics["val_dice"] == pytest.approx(np.mean(expected_dice), rel=1e-5)


def test_a_mislabelled_motor_is_a_miss_and_the_threshold_follows(tmp_path):
    fold = [
        make_tomogram(tmp_path, "bright", blob=(12.3, 20.6, 30.2), amplitude=190, motors=[(12.3, 20.6, 30.2)], seed=1),
        # the label sits 30 voxels (1500 Å) from the blob the detector finds: a far miss
        make_tomogram(tmp_path, "shifted", blob=(27.5, 14.1, 17.8), amplitude=150, motors=[(27.5, 14.1, 47.8)], seed=2),
        make_tomogram(tmp_path, "empty", blob=(20.0, 30.0, 10.0), amplitude=90, motors=[], seed=3),
    ]
    result = validate(BlobDetector(), fold, cfg=config(), device="cpu")
    # 2 positives: t = bright: TP1 FN1 -> 5/9; t = shifted: the same (far miss), so the higher
    # threshold wins; t = empty: + FP -> 5/10; predicting nothing -> 0.
    assert result.metrics["val_f2"] == pytest.approx(5 / 9)
    assert result.threshold == pytest.approx(result.candidates["bright"][0][1])
    assert (result.score.tp, result.score.fp, result.score.fn) == (1, 0, 1)
    assert result.metrics["val_topk_acc"] == 0.5
    assert "val_loss" not in result.metrics


def test_several_candidates_per_tomogram_are_kept_but_only_the_strongest_is_scored(tmp_path):
    tomogram = make_tomogram(tmp_path, "two", blob=(12.3, 20.6, 30.2), amplitude=190,
                             motors=[(12.3, 20.6, 30.2)], seed=4)
    result = validate(BlobDetector(), [tomogram], cfg=config(max_motors=3, nms_radius_a=500.0), device="cpu")
    found = result.candidates["two"]
    assert 1 < len(found) <= 3
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    for (a, _), (b, _) in itertools.pairwise(found):
        assert np.linalg.norm(a - b) > 500.0 / SPACING - STRIDE  # NMS kept them apart (to within a cell)
    assert result.metrics["val_f2"] == 1.0


def test_an_empty_or_unlabelled_fold_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="validation fold is empty"):
        validate(BlobDetector(), [], cfg=config(), device="cpu")
    tomogram = make_tomogram(tmp_path, "unlabelled", blob=None, amplitude=0, motors=[], seed=5)
    tomogram.motors = None
    with pytest.raises(ValueError, match="'unlabelled' has no labels"):
        validate(BlobDetector(), [tomogram], cfg=config(), device="cpu")


def test_a_fold_without_motors_predicts_nothing(tmp_path):
    fold = [make_tomogram(tmp_path, "empty", blob=(20.0, 30.0, 10.0), amplitude=90, motors=[], seed=3)]
    result = validate(BlobDetector(), fold, cfg=config(), device="cpu")
    assert result.threshold == math.inf
    assert (result.metrics["val_f2"], result.metrics["val_topk_acc"]) == (0.0, 0.0)
    assert (result.score.tp, result.score.fp, result.score.fn) == (0, 0, 0)


@pytest.mark.parametrize(("prob", "target", "expected"), [
    ([1.0, 0.0], [1.0, 0.0], 1.0),             # (2 + 1) / (1 + 1 + 1)
    ([0.5, 0.5], [1.0, 0.0], 2 / 3),           # (1 + 1) / (1 + 1 + 1)
    ([0.0, 0.0], [0.0, 0.0], 1.0),             # a quiet heatmap without motor
    ([1.0, 1.0], [0.0, 0.0], 1 / 3),
])
def test_soft_dice_by_hand(prob, target, expected):
    assert soft_dice(np.array(prob).reshape(1, 1, 2), np.array(target).reshape(1, 1, 2)) == pytest.approx(expected)


def test_motor_voxels_follow_the_voxel_extent_convention():
    # output voxel i of stride 8 spans input [8i - 0.5, 8i + 7.5)
    motors = np.array([[7.49, 7.5, -0.5], [0.0, 100.0, 15.0]])
    np.testing.assert_array_equal(motor_voxels(motors, 8, (4, 4, 4)), [[0, 1, 0], [0, 3, 1]])


def test_top_k_counts_a_motor_among_the_k_highest_voxels():
    prob = np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 27  # voxel (2, 2, 2) highest, then (2, 2, 1), ...
    at = np.array([[2 * 4 + 1.5, 2 * 4 + 1.5, 0 * 4 + 1.5]])  # output voxel (2, 2, 0): 3rd highest
    assert in_top_k(prob, at, 4, 3)
    assert not in_top_k(prob, at, 4, 2)
    assert in_top_k(prob, np.vstack([np.zeros((1, 3)), at]), 4, 3)  # any of several motors


def unknown_spacing_config(**test_time):
    return from_dict({"data": {"spacing": SPACING}, "model": {"stride": STRIDE}, "sampling": {"patch_size": [16, 32, 32]},
                      "target": {"sigma_a": 200.0}, "validation": {"overlap": 0.5, "unknown_spacing": True},
                      "test_time": test_time})


@pytest.mark.parametrize("test_time", [{"spacing": "fixed"}, {"spacing": "fixed", "assumed_spacing_a": 40.0},
                                       {"spacing": "multiscale", "multiscale_spacings_a": [35.0, 50.0, 65.0]}])
def test_unknown_spacing_finds_what_predict_finds_on_the_original_without_its_spacing(tmp_path, test_time):
    """The cache holds the tomogram at 50 Å/voxel; its original was 40 Å/voxel. Validation under test
    conditions must see what ``predict`` sees when given the original and no spacing."""
    import dataclasses

    from motorsearch.data.preprocess import resample
    from motorsearch.model_file import LoadedModel
    from motorsearch.predict import Predictor

    cached = dataclasses.replace(
        # background at the fixed normalisation's 0: the zero padding of the windows is no brighter
        make_tomogram(tmp_path, "t", blob=(20, 24, 24), amplitude=120, motors=[(20, 24, 24)], seed=0,
                      background=122.0),
        original_spacing=40.0)
    cfg = unknown_spacing_config(**test_time)
    (found,) = validate(BlobDetector(), [cached], cfg=cfg, device="cpu").candidates["t"]

    original = resample(np.asarray(cached.volume()), SPACING / 40.0)  # back to the 40 Å grid
    coords, probability = Predictor(LoadedModel.in_memory(BlobDetector(), cfg)).locate(original, spacing=None)
    to_cache = np.asarray(SHAPE) / np.asarray(original.shape)
    np.testing.assert_allclose(found[0], (coords + 0.5) * to_cache - 0.5, atol=1.0)
    assert found[1] == pytest.approx(probability, abs=0.03)
    np.testing.assert_allclose(found[0], (20, 24, 24), atol=2.0)  # and it is the motor, in cached voxels


def test_unknown_spacing_changes_what_the_model_sees(tmp_path):
    import dataclasses

    cached = dataclasses.replace(
        # background at the fixed normalisation's 0: the zero padding of the windows is no brighter
        make_tomogram(tmp_path, "t", blob=(20, 24, 24), amplitude=120, motors=[(20, 24, 24)], seed=0,
                      background=122.0),
        original_spacing=25.0)  # read as 50 Å, the original looks twice too small
    known = validate(BlobDetector(), [cached], cfg=config(), device="cpu").candidates["t"][0]
    unknown = validate(BlobDetector(), [cached], cfg=unknown_spacing_config(), device="cpu").candidates["t"][0]
    assert abs(known[1] - unknown[1]) > 0.02  # a different heatmap...
    np.testing.assert_allclose(unknown[0], (20, 24, 24), atol=3.0)  # ...mapped back onto the same grid


def test_ap_and_positive_rate_follow_the_strongest_candidates(fold):
    from motorsearch.evaluation.scoring import average_precision

    result = validate(BlobDetector(), fold, cfg=config(), device="cpu")
    strongest = {t.tomo_id: (result.candidates[t.tomo_id] or [None])[0] for t in fold}
    truth = {t.tomo_id: t.motors for t in fold}
    spacing = {t.tomo_id: t.spacing for t in fold}
    assert result.metrics["val_ap"] == average_precision(truth, strongest, spacing) > 0.0
    assert result.metrics["val_ap_r90"] == average_precision(truth, strongest, spacing, recall_floor=0.9)
    predicted = [c is not None and c[1] >= result.threshold for c in strongest.values()]
    assert result.metrics["val_positive_rate"] == sum(predicted) / len(fold) > 0.0
