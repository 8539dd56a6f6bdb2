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
    content_sha256,
    ensemble_payload,
    load_model_file,
    save_model_file,
    seal,
    write_checksum,
    write_model_payload,
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
    assert payload["sha256"] == content_sha256(payload) and len(payload["sha256"]) == 64


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
    torch.save(seal(payload), tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model_file(tmp_path / "mismatch.pt")


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "absent.pt")


def test_no_temporary_files_left(saved):
    assert [p.name for p in saved[0].parent.iterdir()] == ["model.pt"]


def test_a_changed_weight_is_refused_without_a_sidecar(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name].clone()
    payload["state_dict"][name].view(-1)[0] += 1e-3  # a bit flip that still unpickles
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(ModelFileError, match="does not match the sha256 written inside"):
        load_model_file(tmp_path / "changed.pt")


def test_a_changed_value_is_refused_without_a_sidecar(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    payload["threshold"] = 0.0  # predicts a motor everywhere
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(ModelFileError, match="does not match the sha256 written inside"):
        load_model_file(tmp_path / "changed.pt")


def test_flipped_bytes_are_refused_without_a_sidecar(saved, tmp_path):
    data = saved[0].read_bytes()
    original = load_model_file(saved[0])
    refused = 0
    for offset in range(len(data) // 9, len(data), len(data) // 9):
        flipped = bytearray(data)
        flipped[offset] ^= 0x01
        path = tmp_path / f"flipped-{offset}.pt"
        path.write_bytes(bytes(flipped))
        try:
            loaded = load_model_file(path)
        except ModelFileError:
            refused += 1
            continue
        # a byte of the zip's framing that no reader looks at: what loads is the original, unchanged
        assert loaded.threshold == original.threshold
        for name, tensor in original.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], tensor)
    assert refused >= 8


def test_version_1_files_need_their_sidecar(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    del payload["sha256"]
    payload["format_version"] = 1
    path = tmp_path / "old.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="cannot be verified"):
        load_model_file(path)
    write_checksum(path)
    assert load_model_file(path).threshold == 0.375


def _member(tmp_path, seed, name, **changes):
    torch.manual_seed(seed)
    cfg = ExperimentConfig()
    for key, value in changes.items():
        setattr(cfg.model, key, value)
    model = build_model(cfg.model).eval()
    path = save_model_file(tmp_path / name, model=model, cfg=cfg, threshold=0.5, metrics={"val_f2": 0.5 + seed / 10},
                           extra={"run_id": name})
    return load_model_file(path)


def test_an_ensemble_file_averages_its_members_heatmaps(tmp_path):
    members = [_member(tmp_path, seed, f"m{seed}.pt") for seed in range(3)]
    payload = ensemble_payload(members, threshold=0.25, metrics={"val_f2": 0.9}, quantile=0.5, extra={"k": 3})
    path = write_model_payload(tmp_path / "ensemble.pt", payload)
    loaded = load_model_file(path)
    assert loaded.members == 3 and loaded.threshold == 0.25 and loaded.quantile == 0.5
    assert torch.load(path, weights_only=True)["members"][2]["extra"] == {"run_id": "m2.pt"}
    x = torch.randn(1, 1, 32, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(m.model(x)) for m in members]).mean(0)
        torch.testing.assert_close(torch.sigmoid(loaded.model(x)), expected, rtol=0, atol=1e-6)

    tampered = torch.load(path, weights_only=True)
    tampered["members"][1]["metrics"]["val_f2"] = 1.0
    torch.save(tampered, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="does not match the sha256"):
        load_model_file(tmp_path / "tampered.pt")


def test_members_must_share_their_preprocessing(tmp_path):
    first = _member(tmp_path, 0, "a.pt")
    other = _member(tmp_path, 1, "b.pt", stride=8)
    with pytest.raises(ModelFileError, match="cannot join an ensemble .*stride 16 vs 8"):
        ensemble_payload([first, other], threshold=0.5, metrics={})
