import math

import pytest
import torch

from motorsearch.config import LossConfig
from motorsearch.errors import ConfigError
from motorsearch.losses import (
    LOSSES,
    BCELoss,
    CombinedFocalLoss,
    FocalLoss,
    TopKBCELoss,
    WeightedBCELoss,
    bce_top_k,
    build_loss,
    combined_focal,
    focal,
    top_k_count,
    weighted_bce,
)

torch.set_num_threads(2)

# Four voxels, shape (B, 1, d, h, w) = (1, 1, 1, 2, 2): a background voxel at p = 0.5, a motor
# centre predicted well, a heatmap flank (y = 0.5) predicted low, a confident false positive.
X = [0.0, 2.0, -1.0, 3.0]
Y = [0.0, 1.0, 0.5, 0.0]


def tensors(x=X, y=Y):
    return (torch.tensor(x, dtype=torch.float32).reshape(1, 1, 1, 2, 2),
            torch.tensor(y, dtype=torch.float32).reshape(1, 1, 1, 2, 2))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def bce(x, y):
    p = sig(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# Per-voxel BCE by hand: log 2, log(1 + e^-2), log(1 + e) - 0.5, log(1 + e^3).
BCE = [0.6931472, 0.1269280, 0.8132617, 3.0485874]


def test_hand_values_of_bce_per_voxel():
    assert [bce(x, y) for x, y in zip(X, Y, strict=True)] == pytest.approx(BCE, abs=1e-6)


def test_bce_and_weighted_bce_hand_values():
    x, y = tensors()
    assert BCELoss()(x, y).item() == pytest.approx(sum(BCE) / 4, abs=1e-6)  # 1.1704811
    assert BCELoss()(x, y).item() == pytest.approx(1.1704811, abs=1e-6)
    # weights 1 + 10 y = 1, 11, 6, 1
    expected = (BCE[0] + 11 * BCE[1] + 6 * BCE[2] + BCE[3]) / 4
    assert expected == pytest.approx(2.5043786, abs=1e-6)
    assert WeightedBCELoss(pos_weight=10.0)(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_focal_hand_values():
    x, y = tensors()
    expected = sum(bce(a, b) * abs(b - sig(a)) ** 2 for a, b in zip(X, Y, strict=True)) / 4
    assert expected == pytest.approx(0.7461981, abs=1e-6)
    assert FocalLoss(gamma=2.0)(x, y).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "fraction, k, expected",
    [
        (1.0, 4, sum(BCE) / 4),
        (0.5, 2, (BCE[3] + BCE[2]) / 2),  # the two largest
        (0.3, 2, (BCE[3] + BCE[2]) / 2),  # ceil(1.2) = 2
        (0.25, 1, BCE[3]),
        (0.01, 1, BCE[3]),  # never fewer than one voxel
    ],
)
def test_top_k_hand_values(fraction, k, expected):
    x, y = tensors()
    assert top_k_count(4, fraction) == k
    assert TopKBCELoss(top_k_fraction=fraction)(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_top_k_count_is_not_fooled_by_float_rounding():
    assert 0.28 * 25 > 7  # 7.000000000000001
    assert top_k_count(25, 0.28) == 7


def test_top_k_pools_the_whole_batch():
    # Batch of two patches: patch 0 holds both large losses, so top-2 takes only patch 0's voxels.
    x = torch.tensor([5.0, 4.0, 0.0, 0.0]).reshape(2, 1, 1, 1, 2)
    y = torch.zeros_like(x)
    expected = (math.log1p(math.exp(5.0)) + math.log1p(math.exp(4.0))) / 2
    assert bce_top_k(x, y, top_k_fraction=0.5).item() == pytest.approx(expected, abs=1e-5)


def test_combined_focal_hand_values():
    x, y = tensors()

    def voxel(a, b, alpha=2.0, beta=4.0):
        p = sig(a)
        return -(b**beta * abs(b - p) ** alpha * math.log(p) + (1 - b) ** beta * p**alpha * math.log(1 - p))

    expected = sum(voxel(a, b) for a, b in zip(X, Y, strict=True)) / 4
    assert expected == pytest.approx(0.7367925, abs=1e-6)
    assert CombinedFocalLoss(alpha=2.0, beta=4.0)(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_focal_with_gamma_zero_is_bce_exactly():
    x, y = torch.randn(2, 1, 3, 4, 4), torch.rand(2, 1, 3, 4, 4)
    assert torch.equal(focal(x, y, gamma=0.0), weighted_bce(x, y, pos_weight=0.0))


def test_bce_is_weighted_bce_with_zero_pos_weight_and_top_k_of_everything():
    x, y = torch.randn(2, 1, 3, 4, 4), torch.rand(2, 1, 3, 4, 4)
    plain = BCELoss()(x, y)
    assert torch.equal(plain, WeightedBCELoss(pos_weight=0.0)(x, y))
    assert torch.allclose(TopKBCELoss(top_k_fraction=1.0)(x, y), plain, atol=1e-6)
    assert torch.allclose(plain, torch.nn.functional.binary_cross_entropy(torch.sigmoid(x), y), atol=1e-5)


LOSS_OPTIONS = [
    ("weighted_bce", {"pos_weight": 100.0}),
    ("bce", {}),
    ("focal", {"gamma": 0.5}),
    ("focal", {"gamma": 2.0}),
    ("bce_topk", {"top_k_fraction": 0.1}),
    ("combined_focal", {"alpha": 2.0, "beta": 4.0}),
    ("combined_focal", {"alpha": 0.5, "beta": 0.0}),
]


@pytest.mark.parametrize("name, options", LOSS_OPTIONS)
def test_extreme_logits_give_finite_loss_and_gradients(name, options):
    x = torch.tensor([50.0, -50.0, 50.0, -50.0, 50.0, -50.0]).reshape(1, 1, 1, 2, 3).requires_grad_()
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5]).reshape(1, 1, 1, 2, 3)
    loss = build_loss(LossConfig(name=name, **options))(x, y)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name, options", LOSS_OPTIONS)
def test_losses_return_float32_scalars_under_autocast(name, options):
    loss_fn = build_loss(LossConfig(name=name, **options))
    x, y = torch.randn(2, 1, 2, 4, 4), torch.rand(2, 1, 2, 4, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        low = x.to(torch.bfloat16)
        loss = loss_fn(low, y)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(loss_fn(low.float(), y).item(), rel=1e-6)


# Each loss reads its own fields and nothing else.
OWN_FIELDS = {
    "weighted_bce": {"pos_weight"},
    "bce": set(),
    "focal": {"gamma"},
    "bce_topk": {"top_k_fraction"},
    "combined_focal": {"alpha", "beta"},
}
CHANGED = {"pos_weight": 3.0, "gamma": 1.0, "top_k_fraction": 0.5, "alpha": 1.0, "beta": 2.0}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_reads_only_its_own_options(name):
    assert set(OWN_FIELDS) == set(LOSSES)
    x, y = tensors()
    base = build_loss(LossConfig(name=name))(x, y).item()
    for option, value in CHANGED.items():
        changed = build_loss(LossConfig(name=name, **{option: value}))(x, y).item()
        if option in OWN_FIELDS[name]:
            assert changed != pytest.approx(base), option
        else:
            assert changed == base, option


def test_build_loss_returns_the_named_module_with_its_options():
    loss = build_loss(LossConfig(name="focal", gamma=3.0))
    assert isinstance(loss, FocalLoss) and loss.gamma == 3.0
    assert isinstance(build_loss(LossConfig(name="bce_topk", top_k_fraction=0.05)), TopKBCELoss)


def test_unknown_loss_name_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"`loss.name` must be one of .*'focall'\. Did you mean 'focal'\?"):
        build_loss(LossConfig(name="focall"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FocalLoss(gamma=-1.0), "`gamma` cannot be negative, but got gamma=-1.0."),
        (lambda: WeightedBCELoss(pos_weight=-2.0), "`pos_weight` cannot be negative, but got pos_weight=-2.0."),
        (lambda: TopKBCELoss(top_k_fraction=0.0), "`top_k_fraction` must be in (0, 1], but got top_k_fraction=0.0."),
        (lambda: CombinedFocalLoss(alpha=2.0, beta=-1.0), "`beta` cannot be negative, but got beta=-1.0."),
    ],
)
def test_options_are_checked_on_construction(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="same shape"):
        combined_focal(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 1), alpha=2.0, beta=4.0)
