import pytest
import torch

from motorsearch.config import ModelConfig
from motorsearch.errors import ConfigError
from motorsearch.model import PRESETS, MotorIdentifier, build_model
from motorsearch.model.blocks import PreActResBlock3d, downsample2, group_count
from motorsearch.model.presets import stage_widths

torch.set_num_threads(2)


def count(parameters):
    return sum(p.numel() for p in parameters)


def small(**changes):
    """A two-channel-wide model whose cost can be counted by hand."""
    options = dict(stem_width=2, widths=(2,) * 5, blocks=(1,) * 5, neck_width=2, head_width=2,
                   squeeze_excitation=False)
    return MotorIdentifier(**(options | changes))


@pytest.mark.parametrize(
    "preset, stride, size, expected",
    [
        ("tiny", 16, (32, 32, 32), (2, 2, 2)),
        ("tiny", 16, (48, 64, 32), (3, 4, 2)),  # 48 is a multiple of 16, not of 32
        ("tiny", 16, (16, 16, 16), (1, 1, 1)),  # smallest patch stride 16 allows
        ("tiny", 8, (32, 32, 32), (4, 4, 4)),
        ("tiny", 8, (24, 40, 16), (3, 5, 2)),  # multiples of 8 only
        ("4m", 16, (48, 32, 32), (3, 2, 2)),
        ("4m", 8, (32, 16, 24), (4, 2, 3)),
        ("16m", 16, (32, 32, 16), (2, 2, 1)),
        ("16m", 8, (16, 24, 16), (2, 3, 2)),
        ("64m", 16, (16, 32, 16), (1, 2, 1)),
        ("64m", 8, (8, 16, 8), (1, 2, 1)),
    ],
)
def test_output_shape(preset, stride, size, expected):
    model = build_model(ModelConfig(preset=preset, stride=stride)).eval()
    assert model.stride == stride
    with torch.no_grad():
        logits = model(torch.randn(2, 1, *size))
    assert logits.shape == (2, 1, *expected)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", ["tiny", "4m"])
def test_backbone_and_head_parameters_partition_the_model(preset):
    model = build_model(ModelConfig(preset=preset))
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone.isdisjoint(head)
    assert backbone | head == {id(p) for p in model.parameters()}
    assert len(model.backbone_parameters()) + len(model.head_parameters()) == len(list(model.parameters()))
    assert id(model.stem.weight) in backbone and id(model.reduce[0].weight) in head
    assert id(model.head[-1].bias) in head


def test_preset_sizes():
    counts = {name: count(build_model(ModelConfig(preset=name)).parameters()) for name in ("tiny", "4m")}
    assert 0.25e6 <= counts["tiny"] <= 0.5e6
    assert abs(counts["4m"] - 4e6) <= 0.15 * 4e6
    assert stage_widths(PRESETS["4m"].base_width, PRESETS["4m"].growth) == (10, 22, 48, 112, 272)
    with torch.device("meta"):  # sizes only, no memory
        large = {name: count(build_model(ModelConfig(preset=name)).parameters()) for name in ("16m", "64m")}
    assert abs(large["16m"] - 16e6) <= 0.15 * 16e6
    assert abs(large["64m"] - 64e6) <= 0.15 * 64e6


def test_squeeze_excitation_adds_exactly_its_gates():
    with_se = count(build_model(ModelConfig(preset="tiny", squeeze_excitation=True)).parameters())
    without = count(build_model(ModelConfig(preset="tiny", squeeze_excitation=False)).parameters())
    # tiny: neck width 8 -> five gates 8 -> 2 -> 8, and one 40 -> 10 -> 40 on the concatenation;
    # each gate is two linear layers with biases.
    five_branch_gates = 5 * (8 * 2 + 2 + 2 * 8 + 8)
    head_gate = 40 * 10 + 10 + 10 * 40 + 40
    assert with_se - without == five_branch_gates + head_gate == 1060


def test_flops_per_voxel_matches_a_hand_count():
    # Input 32^3, stride 16, every width 2. Multiply-adds:
    stem = 32**3 * 125 * 1 * 2  # 5x5x5 conv 1 -> 2 at every input voxel
    block = 27 * 2 * 2 + 27 * 2 * 2 + 2 * 2  # two 3x3x3 convs + 1x1x1 skip per level voxel
    encoder = block * (16**3 + 8**3 + 4**3 + 2**3 + 1**3)
    neck = 4 * (2 * 2) * 2**3 + (2 * 2) * 1  # levels 1-4 reduced on the 2^3 output grid, level 5 on its 1^3
    head = 2**3 * (10 * 2 + 2 * (27 * 2 * 2 * 2) + 2 * 1)  # 1x1 10 -> 2, two blocks, 1x1 2 -> 1
    expected = 2 * (stem + encoder + neck + head) / 32**3
    assert expected == pytest.approx(563.0849609375)
    assert small().flops_per_voxel((32, 32, 32)) == pytest.approx(expected, rel=1e-12)


def test_flops_of_the_presets_grow_with_size():
    flops = [build_model(ModelConfig(preset=name)).flops_per_voxel() for name in ("tiny", "4m")]
    assert 1000 < flops[0] < flops[1]


def test_overrides_of_base_width_and_growth():
    model = build_model(ModelConfig(preset="tiny", base_width=6, growth=2.0))
    assert model.stem.out_channels == 6
    assert [stage[-1].conv2.out_channels for stage in model.encoder] == [12, 24, 48, 96, 192]


def test_unknown_preset_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"`model.preset` must be one of .*'tinny'\. Did you mean 'tiny'\?"):
        build_model(ModelConfig(preset="tinny"))


def test_initial_predictions_sit_at_the_prior():
    model = build_model(ModelConfig(preset="tiny")).eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(torch.randn(1, 1, 32, 32, 32)))
    assert probs.min() > 0.01 and probs.max() < 0.03  # sigmoid(-4) = 0.018


def test_gradients_reach_every_parameter():
    model = small(squeeze_excitation=True, neck_width=4)
    model(torch.randn(1, 1, 32, 32, 32)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_drop_path_is_random_in_training_only():
    model = small(drop_path=0.5)
    x = torch.randn(2, 1, 32, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    outputs = [model(x) for _ in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])


@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 24), (1, 2, 32, 32, 32), (1, 32, 32, 32)])
def test_bad_input_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="MotorIdentifier expects|multiples of stride=16"):
        small()(torch.zeros(shape))


# --- geometry: level L voxel j is centred at 2**L * j + (2**L - 1) / 2 ------------------------


def centres(level, n):
    """(1, 1, n, n, n) map whose value along z is the input coordinate of each voxel's centre."""
    z = 2**level * torch.arange(n, dtype=torch.float64) + (2**level - 1) / 2
    return z.reshape(1, 1, n, 1, 1).expand(1, 1, n, n, n).clone()


def test_downsampling_keeps_cell_centres():
    pooled = downsample2(centres(0, 6))
    assert pooled[0, 0, :, 0, 0].tolist() == [0.5, 2.5, 4.5]  # = centres(1, 3)
    odd = downsample2(centres(0, 5))  # odd size: the last voxel stands alone, the origin stays
    assert odd[0, 0, :, 0, 0].tolist() == [0.5, 2.5, 4.0]
    assert downsample2(torch.ones(1, 1, 1, 1, 1)).shape == (1, 1, 1, 1, 1)


@pytest.mark.parametrize("stride", [8, 16])
def test_every_level_lands_on_the_output_cell_centres(stride):
    # A 64^3 input: level L has 64 / 2**L voxels; the output grid has 64 / stride.
    model = small(stride=stride)
    out_n = 64 // stride
    expected = stride * torch.arange(out_n, dtype=torch.float64) + (stride - 1) / 2  # targets.output_centres
    for level in range(1, 6):
        n = 64 // 2**level
        resized = model._onto_output_grid(centres(level, n), torch.nn.Identity(), level, (out_n,) * 3)
        assert resized.shape == (1, 1, out_n, out_n, out_n)
        along_z = resized[0, 0, :, 0, 0]
        # Trilinear up-sampling by r clamps r // 2 cells at each border; the interior is exact.
        border = 2 ** (level - model.output_level) // 2 if level > model.output_level else 0
        inner = slice(border, out_n - border)
        assert torch.allclose(along_z[inner], expected[inner]), (level, along_z.tolist())


def test_residual_block_shapes_and_identity_skip():
    block = PreActResBlock3d(4, 8, downsample=True)
    assert block(torch.randn(1, 4, 6, 5, 4)).shape == (1, 8, 3, 3, 2)
    same = PreActResBlock3d(8, 8)
    assert isinstance(same.skip, torch.nn.Identity)
    torch.nn.init.zeros_(same.conv2.weight)  # residual branch silenced -> the block is the identity
    x = torch.randn(1, 8, 4, 4, 4)
    assert torch.equal(same(x), x)


@pytest.mark.parametrize("channels, groups", [(2, 1), (10, 1), (16, 2), (48, 6), (112, 14), (256, 32), (272, 17)])
def test_group_count_divides_the_channels(channels, groups):
    assert group_count(channels) == groups
    assert channels % group_count(channels) == 0
