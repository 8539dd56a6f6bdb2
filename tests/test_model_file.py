"""The self-contained model file: round trip, weights-only loading, and every way a file can be bad."""

import math

import pytest
import torch

from motorsearch.config import ExperimentConfig
from motorsearch.errors import ModelFileError
from motorsearch.model import build_model
from motorsearch.model_file import (
    FORMAT,
    FORMAT_VERSION,
    checksum_path,
    load_model_file,
    save_model_file,
    write_checksum,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ExperimentConfig()
    cfg.data.spacing = 14.0
    cfg.data.normalization = "zscore"
    cfg.sampling.patch_size = [32, 64, 48]
    model = build_model(cfg.model).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model_file(path, model=model, cfg=cfg, threshold=0.375, metrics={"val_f2": 0.875}, extra={"epoch": 3},
                    quantile=0.4)
    return path, model, cfg


def test_file_loads_with_weights_only_and_holds_everything(saved):
    path, model, cfg = saved
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["threshold"] == 0.375 and payload["metrics"] == {"val_f2": 0.875}
    assert payload["preprocessing"] == {
        "spacing": 14.0, "normalization": "zscore", "patch_size": [32, 64, 48], "stride": 16, "overlap": 0.5,
        "window_batch_size": 2, "max_motors": 1, "nms_radius_a": 1000.0, "precision": "auto",
        "test_time": {"spacing": "fixed", "assumed_spacing_a": None, "multiscale_spacings_a": [10.0, 13.1, 16.0, 20.0],
                      "tta": 1, "threshold": "swept"}}
    assert payload["quantile"] == 0.4
    assert payload["config"] == cfg.to_dict()
    assert payload["architecture"] == model.architecture
    assert payload["extra"] == {"epoch": 3}
    assert set(payload["state_dict"]) == set(model.state_dict())


def test_round_trip_gives_the_same_predictions(saved):
    path, model, cfg = saved
    loaded = load_model_file(path)
    assert not loaded.model.training
    assert loaded.threshold == 0.375 and loaded.preprocessing["spacing"] == 14.0 and loaded.quantile == 0.4
    assert loaded.experiment_config() == cfg
    x = torch.randn(1, 1, 32, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=0)


def test_infinite_threshold_survives(tmp_path):
    cfg = ExperimentConfig()
    path = save_model_file(tmp_path / "m.pt", model=build_model(cfg.model), cfg=cfg, threshold=math.inf, metrics={})
    assert load_model_file(path).threshold == math.inf


def _copy(saved, tmp_path, name="copy.pt"):
    target = tmp_path / name
    target.write_bytes(saved[0].read_bytes())
    return target


def test_checksum_verified_and_tampering_detected(saved, tmp_path):
    path = _copy(saved, tmp_path)
    sidecar = write_checksum(path)
    assert sidecar == checksum_path(path)
    digest, name = sidecar.read_text().split()
    assert len(digest) == 64 and name == path.name
    load_model_file(path)  # verifies and passes

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        load_model_file(path)


def test_saving_over_a_file_drops_its_stale_checksum(saved, tmp_path):
    path = _copy(saved, tmp_path)
    write_checksum(path)
    _, model, cfg = saved
    save_model_file(path, model=model, cfg=cfg, threshold=0.5, metrics={})
    assert not checksum_path(path).exists()
    assert load_model_file(path).threshold == 0.5


def test_truncated_file(saved, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(saved[0].read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="corrupted, truncated"):
        load_model_file(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"tomo_id,Motor axis 0\n", "not a readable model file"),
        (b"", "not a readable model file"),
        ({"state_dict": {}}, "not a motorsearch model file"),
        ([1, 2, 3], "not a motorsearch model file"),
        ({"format": FORMAT, "format_version": 99}, "unknown model file format_version=99"),
        ({"format": FORMAT, "format_version": FORMAT_VERSION}, "lacks state_dict"),
    ],
)
def test_foreign_files(tmp_path, content, message):
    path = tmp_path / "foreign.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ModelFileError, match=message):
        load_model_file(path)


def test_weights_that_do_not_fit_the_architecture(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    payload["architecture"]["head_width"] = 8
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model_file(tmp_path / "mismatch.pt")


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "absent.pt")


def test_no_temporary_files_left(saved):
    assert [p.name for p in saved[0].parent.iterdir()] == ["model.pt"]
