"""MRC and zarr / OME-Zarr readers with a motor CSV, on tiny volumes written here."""

from __future__ import annotations

import pickle
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import zarr

from motorsearch.data.volumes import read_volume_folder, to_uint8
from motorsearch.errors import ConfigError, DataError

RAMP = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)  # percentiles 0.5/99.5: 4.995 and 994.005


def write_mrc(path: Path, data: np.ndarray, voxel_size: float | tuple[float, float, float] | None = None) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if voxel_size is not None:
            mrc.voxel_size = voxel_size
    return path


def write_ome_zarr(path: Path, levels: list[np.ndarray], *, scale: float | None, unit: str | None,
                   zarr_format: int = 2) -> Path:
    """An OME-Zarr image: NGFF 0.4 attributes (zarr v2) or 0.5 (zarr v3, nested under "ome")."""
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for index, level in enumerate(levels):
        array = group.create_array(str(index), shape=level.shape, dtype=level.dtype)
        array[:] = level
        factor = 2**index
        transform = [{"type": "scale", "scale": [scale * factor] * 3}] if scale is not None else []
        datasets.append({"path": str(index), "coordinateTransformations": transform})
    axes = [{"name": n, "type": "space", **({"unit": unit} if unit else {})} for n in "zyx"]
    image = {"version": "0.4" if zarr_format == 2 else "0.5", "axes": axes, "datasets": datasets}
    if zarr_format == 2:
        group.attrs["multiscales"] = [image]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [image]}
    return path


def write_plain_zarr(path: Path, data: np.ndarray) -> Path:
    array = zarr.open_array(str(path), mode="w", shape=data.shape, dtype=data.dtype)
    array[:] = data
    return path


def test_float_mrc_percentile_scaling_and_header_spacing(tmp_path: Path) -> None:
    write_mrc(tmp_path / "tomo_a.mrc", RAMP, voxel_size=12.5)
    (record,) = read_volume_folder(tmp_path, fmt="mrc")
    assert (record.tomo_id, record.shape, record.spacing, record.motors) == ("tomo_a", (10, 10, 10), 12.5, None)
    volume = record.load()
    assert volume.dtype == np.uint8 and volume.shape == (10, 10, 10)
    # (500 - 4.995) * 255 / (994.005 - 4.995) = 127.63 -> 128; below/above the percentiles clip.
    assert volume[5, 0, 0] == 128
    assert volume.flat[0] == 0 and volume.flat[4] == 0 and volume.flat[999] == 255
    assert volume.flat[5] == 0 and volume.flat[6] == 0  # (6 - 4.995) * 0.2578 = 0.26 -> 0
    assert volume.flat[10] == 1  # (10 - 4.995) * 0.2578 = 1.29 -> 1
    assert np.all(np.diff(volume.ravel().astype(int)) >= 0)


def test_uint8_is_kept_and_constant_becomes_mid_grey() -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_uint8(data), data)
    assert np.all(to_uint8(np.full((2, 3, 4), 7.0)) == 128)


def test_mrc_rec_labels_in_voxels_and_angstrom(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.zeros((8, 10, 12), np.int8), voxel_size=10.0)
    write_mrc(tmp_path / "b.rec", np.zeros((6, 6, 6), np.float32), voxel_size=20.0)
    write_mrc(tmp_path / "c.mrc", np.zeros((4, 4, 4), np.float32), voxel_size=10.0)
    (tmp_path / "notes.txt").write_text("ignored")
    voxels = tmp_path / "voxels.csv"
    voxels.write_text("tomo_id,z,y,x,comment\na,1,2,3,first\na,7,9.4,11,second\nb,-1,-1,-1,none\n")
    records = read_volume_folder(tmp_path, fmt="mrc", labels=voxels)
    assert [r.tomo_id for r in records] == ["a", "b", "c"]
    np.testing.assert_array_equal(records[0].motors, [[1, 2, 3], [7, 9.4, 11]])
    assert records[1].motors.shape == (0, 3) and records[2].motors.shape == (0, 3)  # c: not in the CSV
    assert records[1].spacing == 20.0
    angstrom = tmp_path / "angstrom.csv"
    angstrom.write_text("tomo_id,Motor axis 0,Motor axis 1,Motor axis 2\nb,20,40,100\n")
    records = read_volume_folder(tmp_path, fmt="mrc", labels=angstrom, labels_unit="angstrom")
    np.testing.assert_array_equal(records[1].motors, [[1, 2, 5]])  # Å / 20 Å per voxel


def test_explicit_spacing_overrides_header(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.zeros((4, 4, 4), np.float32), voxel_size=(1.0, 1.0, 3.0))  # anisotropic
    with pytest.raises(DataError, match=r"a\.mrc: header voxel size .* is not isotropic"):
        read_volume_folder(tmp_path, fmt="mrc")
    (record,) = read_volume_folder(tmp_path, fmt="mrc", spacing=14.2)
    assert record.spacing == 14.2


def test_mrc_without_spacing_names_the_file_and_the_fix(tmp_path: Path) -> None:
    write_mrc(tmp_path / "nospacing.mrc", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError) as info:
        read_volume_folder(tmp_path, fmt="mrc")
    message = str(info.value)
    assert "nospacing.mrc" in message and "does not give a voxel spacing" in message
    assert "data.source_spacing" in message


def test_plain_zarr_and_ome_zarr_in_nanometers(tmp_path: Path) -> None:
    level0 = (RAMP % 256).astype(np.uint8)
    write_ome_zarr(tmp_path / "ome.zarr", [level0, level0[::2, ::2, ::2]], scale=1.5, unit="nanometer")
    write_ome_zarr(tmp_path / "ome5.zarr", [RAMP], scale=16.0, unit="angstrom", zarr_format=3)
    write_ome_zarr(tmp_path / "um.zarr", [level0], scale=0.0012, unit="micrometer")
    records = {r.tomo_id: r for r in read_volume_folder(tmp_path, fmt="zarr")}
    assert records["ome"].shape == (10, 10, 10) and records["ome"].spacing == pytest.approx(15.0)
    np.testing.assert_array_equal(records["ome"].load(), level0)  # level 0, uint8 kept
    assert records["ome5"].spacing == pytest.approx(16.0) and records["ome5"].load()[5, 0, 0] == 128
    assert records["um"].spacing == pytest.approx(12.0)

    plain = tmp_path / "plain"
    plain.mkdir()
    write_plain_zarr(plain / "p.zarr", RAMP)
    with pytest.raises(DataError, match=r"p\.zarr: the file does not give a voxel spacing"):
        read_volume_folder(plain, fmt="zarr")
    (record,) = read_volume_folder(plain, fmt="zarr", spacing=11.0)
    assert (record.tomo_id, record.spacing, int(record.load()[5, 0, 0])) == ("p", 11.0, 128)


def test_ome_zarr_without_units_needs_spacing(tmp_path: Path) -> None:
    write_ome_zarr(tmp_path / "nounit.zarr", [RAMP], scale=1.5, unit=None)
    with pytest.raises(DataError, match="nounit.zarr: the file does not give a voxel spacing"):
        read_volume_folder(tmp_path, fmt="zarr")


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("tomo_id,z,y,x\nvol_b,1,1,1\n", ["line 2", "no volume named 'vol_b'", "Did you mean 'vol_a'?"]),
        ("tomo_id,z,y,x\nvol_a,1,one,1\n", ["line 2", "`y` must be a number", "'one'"]),
        ("tomo_id,z,y,x\nvol_a,1,1,1\nvol_a,1,1,12\n", ["line 3", "`x`=12 lies outside the volume", "(8, 10, 12)"]),
        ("tomo_id,z,y\nvol_a,1,1\n", ["columns must include tomo_id and z, y, x"]),
    ],
    ids=["unknown-tomogram", "not-a-number", "outside", "missing-column"],
)
def test_bad_label_csv(tmp_path: Path, csv_text: str, expected: list[str]) -> None:
    write_mrc(tmp_path / "vol_a.mrc", np.zeros((8, 10, 12), np.float32), voxel_size=10.0)
    labels = tmp_path / "labels.csv"
    labels.write_text(csv_text)
    with pytest.raises(DataError) as info:
        read_volume_folder(tmp_path, fmt="mrc", labels=labels)
    message = str(info.value)
    assert message.startswith(str(labels))
    for text in expected:
        assert text in message


def test_angstrom_outside_shows_the_conversion(tmp_path: Path) -> None:
    write_mrc(tmp_path / "vol_a.mrc", np.zeros((8, 10, 12), np.float32), voxel_size=10.0)
    labels = tmp_path / "labels.csv"
    labels.write_text("tomo_id,z,y,x\nvol_a,50,50,120\n")
    with pytest.raises(DataError, match=r"`x`=120 \(120 Å / 10 Å per voxel = 12 voxels\) lies outside"):
        read_volume_folder(tmp_path, fmt="mrc", labels=labels, labels_unit="angstrom")


def test_bad_volumes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \*\.mrc or \*\.rec volumes"):
        read_volume_folder(tmp_path, fmt="mrc")
    (tmp_path / "garbage.mrc").write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match=r"garbage\.mrc: cannot read the MRC file"):
        read_volume_folder(tmp_path, fmt="mrc", spacing=10.0)
    (tmp_path / "garbage.mrc").unlink()
    write_mrc(tmp_path / "flat.mrc", np.zeros((1, 4, 5), np.float32), voxel_size=10.0)
    with pytest.raises(DataError, match=r"flat\.mrc: expected a 3D volume .* shape \(1, 4, 5\)"):
        read_volume_folder(tmp_path, fmt="mrc")
    write_plain_zarr(tmp_path / "four.zarr", np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(DataError, match=r"four\.zarr: expected a 3D volume .* \(2, 3, 4, 5\)"):
        read_volume_folder(tmp_path, fmt="zarr", spacing=10.0)
    with pytest.raises(ConfigError, match="`fmt` must be one of mrc, zarr, but got fmt='tiff'"):
        read_volume_folder(tmp_path, fmt="tiff")
    with pytest.raises(ConfigError, match="`labels_unit` must be voxel or angstrom, but got labels_unit='nm'"):
        read_volume_folder(tmp_path, fmt="zarr", labels_unit="nm")


def test_records_pickle_for_worker_processes(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", RAMP, voxel_size=10.0)
    write_ome_zarr(tmp_path / "b.zarr", [RAMP], scale=1.0, unit="nanometer")
    for fmt in ("mrc", "zarr"):
        (record,) = read_volume_folder(tmp_path, fmt=fmt)
        copy = pickle.loads(pickle.dumps(record))
        np.testing.assert_array_equal(copy.load(), record.load())
