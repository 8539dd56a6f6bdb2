import pytest

from motorsearch.config import ExperimentConfig, field_paths, from_dict, load_experiment
from motorsearch.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_round_trip():
    cfg = from_dict({})
    assert cfg == ExperimentConfig()
    assert from_dict(cfg.to_dict()) == cfg


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.001\n  epochs: 3\nloss:\n  name: focal\n")
    cfg = load_experiment(path, ["optim.lr=2e-3", "loss.gamma=1", "data.spacing=null",
                                 "sampling.patch_size=[32, 64, 64]"])
    assert cfg.optim.lr == 0.002 and cfg.optim.epochs == 3
    assert cfg.loss.name == "focal" and cfg.loss.gamma == 1.0 and isinstance(cfg.loss.gamma, float)
    assert cfg.data.spacing is None
    assert cfg.sampling.patch_size == [32, 64, 64]
    assert cfg.get("optim.lr") == 0.002


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("optim:\n  lrr: 1\n", [], "unknown config key 'optim.lrr'. Did you mean 'optim.lr'?"),
        ("", ["optim.lrr=1"], "unknown config key 'optim.lrr'. Did you mean 'optim.lr'?"),
        ("", ["optim.epochs=two"], "`optim.epochs` must be an int, but got optim.epochs='two'."),
        ("", ["optim.epochs=1.5"], "`optim.epochs` must be an int"),
        ("", ["optim.lr=-1"], "`optim.lr` must be positive, but got optim.lr=-1.0."),
        ("", ["data.spacing=0"], "`data.spacing` must be positive, but got data.spacing=0.0."),
        ("", ["sampling.patch_size=[30, 64, 64]"], "`sampling.patch_size` must be multiples of model.stride=16"),
        ("", ["augment.flip=yes please"], "`augment.flip` must be a bool"),
        ("", ["optim.lr"], "expected dotted.key=value"),
        ("optim: 3\n", [], "`optim` must be a mapping"),
        ("optim: [\n", [], "not valid YAML"),
    ],
)
def test_bad_config_names_key_and_value(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_experiment(tmp_path / "nope.yaml")


def test_field_paths_cover_leaves():
    paths = field_paths()
    assert "optim.lr" in paths and "data.synthetic.difficulty" in paths
    assert "data.synthetic" not in paths


def test_cli_reports_bad_override_with_exit_2(tmp_path, capsys):
    path = write(tmp_path, "")
    from motorsearch.cli import add_overrides  # noqa: F401
    with pytest.raises(ConfigError):
        load_experiment(path, ["loss.nmae=focal"])
