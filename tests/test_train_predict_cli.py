"""``train`` -> ``predict`` end to end through the CLI on tiny simulated data, and predict's bad inputs."""

import csv

import numpy as np
import pytest
import torch
import yaml

from motorsearch.cli import main
from motorsearch.config import ExperimentConfig
from motorsearch.data.kaggle import read_kaggle
from motorsearch.evaluation.scoring import read_solution_csv, score_submission_csv
from motorsearch.model_file import LoadedModel, checksum_path, load_model_file, write_model_payload
from motorsearch.predict import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    from motorsearch.data.simulate import simulate_dataset

    base = tmp_path_factory.mktemp("cli")
    root = simulate_dataset(base / "byu", n_train=6, n_test=3, seed=1, scale=0.3)
    experiment = base / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "cli-test", "device": "cpu",
        "data": {"root": str(root), "cache_dir": str(base / "cache"), "n_folds": 3},
        "sampling": {"patch_size": [32, 64, 64], "batch_size": 2, "patches_per_epoch": 4},
        "optim": {"epochs": 2, "lr": 1e-3},
        "validation": {"window_batch_size": 1},
    }))
    model = base / "out" / "model.pt"
    code = main(["train", str(experiment), "--out", str(model), "--set", "optim.seed=3"])
    assert code == 0
    return root, base, model


def test_train_writes_a_model_file_with_checksum(trained, capsys):
    root, base, model = trained
    loaded = load_model_file(model)  # also verifies the checksum written beside it
    assert checksum_path(model).is_file()
    assert loaded.config["optim"]["seed"] == 3 and loaded.config["name"] == "cli-test"
    assert loaded.preprocessing["patch_size"] == [32, 64, 64] and loaded.preprocessing["spacing"] == 16.0
    assert set(loaded.metrics) >= {"val_f2", "val_threshold", "epoch"}
    checkpoints = sorted(p.name for p in (base / "out" / "model.work" / "checkpoints").iterdir())
    assert checkpoints[-1] == "epoch_0002" and len(checkpoints) <= 2


def test_predict_writes_a_scorable_submission(trained, tmp_path, capsys):
    root, base, model = trained
    out = tmp_path / "submission.csv"
    code = main(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(out),
                 "--labels", str(root / "test_solution.csv")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "spacing: from the data for all 3 tomograms (kaggle and --labels)" in printed
    assert "F2=" in printed

    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    records = {r.tomo_id: r for r in read_kaggle(root, "test")}
    assert [r["tomo_id"] for r in rows] == sorted(records)
    for row in rows:
        point = np.array([float(row[f"Motor axis {i}"]) for i in range(3)])
        shape = np.array(records[row["tomo_id"]].shape)
        assert np.all(point == -1) or np.all((point >= -0.5) & (point < shape - 0.5))
    score = score_submission_csv(root / "test_solution.csv", out)
    truth, _ = read_solution_csv(root / "test_solution.csv")
    assert score.tp + score.fn == sum(len(m) > 0 for m in truth.values())
    assert score.tp + score.fp == sum(not np.all(np.array([float(r["Motor axis 0"])]) == -1) for r in rows)
    assert f"F2={score.f2:.4f}" in printed


def test_predict_without_spacing_assumes_the_models(trained, tmp_path, capsys):
    root, base, model = trained
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "give none; fixed: assumed 16 Å/voxel; TTA 1 view (the model)" in printed
    assert "threshold: swept on validation" in printed
    assert main(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(out),
                 "--spacing", "12.5"]) == 0
    assert "give none; fixed: assumed 12.5 Å/voxel; TTA 1 view (--spacing)" in capsys.readouterr().out
    assert main(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(out),
                 "--spacing-policy", "multiscale", "--tta", "4"]) == 0
    assert ("give none; multiscale: read at each of 10, 13.1, 16, 20 Å/voxel, the strongest candidate kept; "
            "TTA 4 views (--spacing-policy)") in capsys.readouterr().out


class BrightSpot(torch.nn.Module):
    """Logits = mean intensity of each stride^3 block: the peak sits on the brightest blob."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return torch.nn.functional.avg_pool3d(x, self.stride) * 4.0


def loaded_bright_spot(spacing, threshold=0.5):
    cfg = ExperimentConfig()
    return LoadedModel(
        model=BrightSpot(16), architecture={}, threshold=threshold, metrics={}, config=cfg.to_dict(),
        format_version=1, motorsearch_version="test", path=None,  # type: ignore[arg-type]
        preprocessing={"spacing": spacing, "normalization": "fixed", "patch_size": [32, 64, 64], "stride": 16,
                       "overlap": 0.5, "window_batch_size": 2, "max_motors": 1, "nms_radius_a": 1000.0,
                       "precision": "fp32"})


@pytest.mark.parametrize(("spacing", "motor"), [(8.0, (70.0, 100.0, 57.0)), (16.0, (30.0, 41.0, 20.0)),
                                                (24.0, (20.0, 30.0, 30.0))])
def test_prediction_maps_back_to_the_original_grid(spacing, motor):
    """A bright blob at a known voxel of a tomogram at ``spacing`` Å, model at 16 Å: found where it is."""
    shape = (int(1200 / spacing), int(1400 / spacing), int(1100 / spacing))
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    distance_a = spacing * np.sqrt((z - motor[0]) ** 2 + (y - motor[1]) ** 2 + (x - motor[2]) ** 2)
    volume = (40 + 215 * np.exp(-0.5 * (distance_a / 150.0) ** 2)).astype(np.uint8)
    found = Predictor(loaded_bright_spot(16.0)).predict(volume, spacing=spacing)
    assert found is not None
    # the heatmap has 256 Å voxels; sub-voxel refinement lands within ~15 Å, a wrong mapping would miss by 100s
    assert np.linalg.norm((found - np.array(motor)) * spacing) < 40.0


def test_below_threshold_predicts_no_motor():
    volume = np.full((40, 64, 64), 50, dtype=np.uint8)
    assert Predictor(loaded_bright_spot(16.0, threshold=0.99)).predict(volume, spacing=16.0) is None


# --- bad input: a clear message and exit code 2 ------------------------------------------------------


def run_predict(capsys, *arguments):
    code = main(["predict", *arguments])
    return code, capsys.readouterr().err


def test_predict_rejects_a_foreign_model_file(trained, tmp_path, capsys):
    root, _, _ = trained
    fake = tmp_path / "fake.pt"
    fake.write_text("not a model")
    code, err = run_predict(capsys, "--model", str(fake), "--data", str(root / "test"), "--out", str(tmp_path / "s"))
    assert code == 2 and "not a readable model file" in err and "Traceback" not in err


def test_predict_rejects_a_tampered_model_file(trained, tmp_path, capsys):
    root, _, model = trained
    copy = tmp_path / "model.pt"
    copy.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    checksum_path(copy).write_text(checksum_path(model).read_text())
    code, err = run_predict(capsys, "--model", str(copy), "--data", str(root / "test"), "--out", str(tmp_path / "s"))
    assert code == 2 and "checksum mismatch" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--spacing", "0"], "`--spacing` must be positive, but got --spacing=0.0"),
        (["--spacing", "-3"], "`--spacing` must be positive"),
        (["--patch-size", "32", "64", "40"], "multiples of the model's stride=16"),
        (["--patch-size", "0", "64", "64"], "multiples of the model's stride=16"),
    ],
)
def test_predict_rejects_bad_options(trained, tmp_path, capsys, extra, message):
    root, _, model = trained
    code, err = run_predict(capsys, "--model", str(model), "--data", str(root / "test"), "--out",
                            str(tmp_path / "s.csv"), *extra)
    assert code == 2 and message in err
    assert not (tmp_path / "s.csv").exists()


def test_predict_rejects_empty_and_missing_folders(trained, tmp_path, capsys):
    _, _, model = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_predict(capsys, "--model", str(model), "--data", str(empty), "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "no tomograms found" in err
    code, err = run_predict(capsys, "--model", str(model), "--data", str(tmp_path / "absent"), "--out",
                            str(tmp_path / "s.csv"))
    assert code == 2 and "no such folder" in err


def test_train_rejects_an_unknown_key(tmp_path, capsys):
    experiment = tmp_path / "bad.yaml"
    experiment.write_text("optim:\n  lr: 1e-3\n")
    code = main(["train", str(experiment), "--out", str(tmp_path / "m.pt"), "--set", "optim.learning_rate=1"])
    assert code == 2 and "unknown config key 'optim.learning_rate'" in capsys.readouterr().err


def test_predict_on_mrc_files_takes_each_header_spacing(trained, tmp_path, capsys):
    import mrcfile

    from motorsearch.predict import read_tomograms

    _, _, model = trained
    folder = tmp_path / "mrc"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, voxel_size in (("with_header", 12.0), ("without_header", 0.0)):
        with mrcfile.new(folder / f"{name}.mrc") as mrc:
            mrc.set_data(rng.integers(0, 255, size=(24, 40, 36), dtype=np.uint8))
            mrc.voxel_size = voxel_size
    records, fmt = read_tomograms(folder)
    assert fmt == "mrc"
    assert {r.tomo_id: r.spacing for r in records} == {"with_header": 12.0, "without_header": None}
    assert records[0].load().shape == (24, 40, 36)

    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(model), "--data", str(folder), "--out", str(out)]) == 0
    assert "1 of 2 tomograms give none; fixed: assumed 16 Å/voxel" in capsys.readouterr().out
    with open(out, newline="") as handle:
        assert sorted(row["tomo_id"] for row in csv.DictReader(handle)) == ["with_header", "without_header"]


def test_a_kaggle_root_gets_a_hint(trained, tmp_path, capsys):
    root, _, model = trained
    code, err = run_predict(capsys, "--model", str(model), "--data", str(root), "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "pass --data" in err


def test_experiment_files_load():
    from pathlib import Path

    from motorsearch.config import load_experiment

    folder = Path(__file__).resolve().parents[1] / "experiments"
    demo = load_experiment(folder / "synthetic_demo.yaml")
    assert demo.data.root is None and demo.device == "cpu" and demo.model.preset == "tiny"
    assert (demo.augment.zoom_min, demo.augment.zoom_max) == (0.75, 1.65)
    byu = load_experiment(folder / "byu.yaml", ["data.root=/somewhere"])
    assert (byu.data.spacing, byu.model.stride, byu.target.sigma_a, byu.optim.precision) == (16.0, 16, 200.0, "auto")
    assert byu.validation.unknown_spacing and (byu.test_time.spacing, byu.test_time.assumed_spacing_a) == ("fixed", 13.1)
    assert (byu.augment.zoom_min, byu.augment.zoom_max) == (0.6, 1.2)


def test_train_resume_flag(trained, tmp_path, capsys):
    root, base, model = trained
    experiment, workdir = base / "tiny.yaml", base / "out" / "model.work"
    last = workdir / "checkpoints" / "epoch_0002"
    again = tmp_path / "again.pt"
    # resuming from the last epoch trains nothing more and hands back the same best model
    assert main(["train", str(experiment), "--out", str(again), "--workdir", str(workdir), "--resume", str(last),
                 "--set", "optim.seed=3"]) == 0
    assert torch.load(again, weights_only=True)["metrics"] == load_model_file(model).metrics
    code = main(["train", str(experiment), "--out", str(again), "--resume", str(tmp_path)])
    assert code == 2 and "not a training checkpoint" in capsys.readouterr().err


def with_quantile(model, folder, quantile):
    """A copy of ``model`` whose file says the validation threshold predicted ``quantile`` of the tomograms."""
    payload = torch.load(model, weights_only=True)
    payload["quantile"] = quantile
    return write_model_payload(folder / f"quantile-{quantile}.pt", payload)  # sealed anew, as a writer would


def test_quantile_threshold_predicts_the_validation_rate_of_the_tomograms(trained, tmp_path, capsys):
    root, base, model = trained
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(with_quantile(model, tmp_path, 0.67)), "--data", str(root / "test"),
                 "--out", str(out), "--threshold", "quantile"]) == 0
    printed = capsys.readouterr().out
    assert "threshold: quantile, a motor in the 67% of tomograms with the strongest candidates" in printed
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert sum(row["Motor axis 0"] != "-1" for row in rows) == 2 == round(0.67 * 3)


@pytest.mark.parametrize(("strategy", "threshold", "quantile", "expected"), [
    ("swept", 0.5, None, [True, False, False, True]),
    ("quantile", 0.99, 0.5, [True, False, False, True]),  # the top half, whatever the threshold
    ("quantile", 0.0, 0.25, [False, False, False, True]),
    ("quantile", 0.0, 0.9, [True, True, False, True]),  # a tomogram without a candidate never gets one
])
def test_decide(strategy, threshold, quantile, expected):
    from motorsearch.predict import decide

    candidates = [(np.zeros(3), 0.6), (np.zeros(3), 0.2), None, (np.zeros(3), 0.9)]
    assert decide(candidates, strategy=strategy, threshold=threshold, quantile=quantile) == expected


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "quantile", "--model-quantile", "none"],
     "the quantile threshold needs the validation positive rate in (0, 1], but the model file has quantile=None; "
     "use --threshold swept."),
    (["--threshold", "quantile", "--model-quantile", "1.5"], "but the model file has quantile=1.5"),
    (["--threshold", "quantile", "--model-quantile", "0.5", "--only-one"],
     "`--threshold quantile` ranks tomograms against each other and needs at least 2, but got 1 tomogram(s)"),
    (["--spacing", "0"], "`--spacing` must be positive, but got --spacing=0.0."),
])
def test_bad_test_time_input_exits_2_and_writes_nothing(trained, tmp_path, capsys, args, message):
    root, base, model = trained
    args = list(args)
    if "--model-quantile" in args:
        at = args.index("--model-quantile")
        model = with_quantile(model, tmp_path, None if args[at + 1] == "none" else float(args[at + 1]))
        del args[at:at + 2]
    data = root / "test"
    if "--only-one" in args:
        args.remove("--only-one")
        data = tmp_path / "one"
        data.mkdir()
        first = sorted((root / "test").iterdir())[0]
        (data / first.name).symlink_to(first)
    out = tmp_path / "out" / "submission.csv"
    assert main(["predict", "--model", str(model), "--data", str(data), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.parent.exists()


@pytest.mark.parametrize(("setting", "message"), [
    ("test_time.spacing=guess", "`test_time.spacing` must be one of fixed, multiscale, but got test_time.spacing='guess'."),
    ("test_time.tta=3", "`test_time.tta` must be one of 1, 4, 8, 16, but got test_time.tta=3."),
    ("test_time.assumed_spacing_a=-2", "`test_time.assumed_spacing_a` must be positive or null"),
    ("test_time.threshold=median", "`test_time.threshold` must be one of swept, quantile"),
    ("augment.zoom_min=0", "`augment.zoom_min` must be positive, but got augment.zoom_min=0"),
    ("augment.zoom_max=0.5", "`augment.zoom_max` must be finite and at least zoom_min=1.0, but got augment.zoom_max=0.5"),
])
def test_bad_test_time_and_zoom_settings_exit_2_and_write_nothing(trained, tmp_path, capsys, setting, message):
    root, base, model = trained
    out = tmp_path / "out" / "model.pt"
    assert main(["train", str(base / "tiny.yaml"), "--out", str(out), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.parent.exists()
