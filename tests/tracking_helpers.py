"""A tiny real Ray Tune search tracked in MLflow, shared by the tracking and export tests.

The trainable builds a real (tiny) MotorIdentifier, nudges its weights each epoch, writes real
checkpoint folders (state.pt + a model file from ``save_model_file``) and reports scripted
metric values, so the expected ranking is known by hand:

    case     val_f2 per epoch      ends as         best (epoch)
    good     0.3, 0.8, 0.6         finished        0.8 (2)
    tie      0.5, 0.6, 0.8         finished        0.8 (3)   loses the tie: reached later
    short    0.9                   early_stopped   0.9 (1)   returns after 1 of 3 epochs
    crash    0.95, then raises     errored         0.95 (1)
"""

from __future__ import annotations

import functools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from motorsearch.objective import Objective

EPOCHS = 3
PATCH = [32, 32, 32]
CASES = {
    "good": {"lr": 1e-3, "values": [0.3, 0.8, 0.6]},
    "tie": {"lr": 3e-3, "values": [0.5, 0.6, 0.8]},
    "short": {"lr": 1e-2, "values": [0.9]},
    "crash": {"lr": 3e-2, "values": [0.95, None]},
}


def tiny_config(**overrides: Any):
    from motorsearch.config import from_dict

    raw = {"name": "tiny", "device": "cpu", "sampling": {"patch_size": PATCH, "batch_size": 1, "patches_per_epoch": 1},
           "optim": {"epochs": EPOCHS}, "validation": {"window_batch_size": 1}}
    raw.update(overrides)
    return from_dict(raw)


def tiny_trainable(config: dict[str, Any], folder: str | None = None) -> None:
    """Ray Tune function trainable for the cases above (runs in a Ray worker). With ``folder`` it draws
    the validation picture of each new best epoch into the checkpoint, as the real trainer does."""
    import torch
    from ray import tune

    from motorsearch.data.preprocess import normalize
    from motorsearch.evaluation.inference import predict_volume
    from motorsearch.evaluation.pictures import VALIDATION_PICTURE, validation_png
    from motorsearch.model import build_model
    from motorsearch.model_file import save_model_file

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg.model)
    values = CASES[config["case"]]["values"]
    history = []
    for epoch, value in enumerate(values, start=1):
        if value is None:
            raise RuntimeError("scripted crash")
        with torch.no_grad():  # a different model each epoch, so "which epoch" is visible in predictions
            for parameter in model.parameters():
                parameter.add_(0.01 * epoch * config["lr"] * 100)
        checkpoint = Path(tempfile.mkdtemp(prefix=f"ckpt{epoch}-", dir=tune.get_context().get_trial_dir()))
        torch.save({"epoch": epoch}, checkpoint / "state.pt")
        save_model_file(checkpoint / "model.pt", model=model, cfg=cfg, threshold=0.5, metrics={"val_f2": value})
        if folder is not None and all(value >= h["val_f2"] for h in history):  # a new best (ties: the later)
            tomograms = tiny_tomograms(folder)
            heatmaps = {t.tomo_id: predict_volume(model, normalize(t.volume(), "fixed"), patch_size=PATCH,
                                                  stride=cfg.model.stride, overlap=0.0, batch_size=1, device="cpu")
                        for t in tomograms}
            validation_png(tomograms, heatmaps, checkpoint / VALIDATION_PICTURE, threshold=0.5,
                           stride=cfg.model.stride, nms_radius_a=cfg.validation.nms_radius_a, normalization="fixed")
        metrics = {"epoch": epoch, "val_f2": value, "train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch}
        history.append(metrics)  # the objective so far, reported as the real trainable does
        tune.report({**metrics, **Objective().report(history)},
                    checkpoint=tune.Checkpoint.from_directory(str(checkpoint)))


def tiny_tomograms(folder: str, cfg: Any = None) -> list[Any]:
    """One 32^3 labelled tomogram (a bright blob at the motor) as a real CachedTomogram."""
    from motorsearch.data.cache import CachedTomogram

    path = Path(folder) / "tomo_a.npy"
    if not path.exists():
        z, y, x = np.mgrid[:32, :32, :32]
        volume = 100 + 100 * np.exp(-((z - 12) ** 2 + (y - 20) ** 2 + (x - 9) ** 2) / 8.0)
        np.save(path, volume.astype(np.uint8))
    motors = np.array([[12.0, 20.0, 9.0]])
    return [CachedTomogram(tomo_id="tomo_a", shape=(32, 32, 32), spacing=16.0, original_shape=(32, 32, 32),
                           original_spacing=16.0, motors=motors, motors_a=motors * 16.0, fold=0, path=path,
                           mean=None, std=None)]


@dataclass
class TinySearch:
    folder: Path
    tracking_uri: str
    name: str
    space_file: Path
    parent_run_id: str
    results: Any  # ray.tune.ResultGrid


def run_tiny_search(folder: Path, *, name: str = "tiny", tracking_uri: str | None = None,
                    cases: tuple[str, ...] = tuple(CASES), pictures: bool = True) -> TinySearch:
    """Run the 4-case search through ``SearchRun`` + ``TrialTracker`` (Ray must be initialised)."""
    from ray import cloudpickle, tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from motorsearch.tracking.search_runs import SearchRun

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/ modules
    folder.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    space_file = folder / "space.yaml"
    space_file.write_text(f"name: {name}\nexperiment: tiny.yaml\nmetric: val_f2\nmode: max\n")
    with SearchRun.start(name=name, objective=Objective(), space_file=space_file, tracking_uri=uri,
                         ray_address="local", storage_path=str(folder / "ray")) as search:
        callback = search.trial_callback(max_epochs=EPOCHS, resolve_config=lambda params: tiny_config().to_dict())
        points = [{"case": case, "lr": CASES[case]["lr"]} for case in cases]  # exactly these trials, in order
        tuner = tune.Tuner(
            tune.with_parameters(tiny_trainable, folder=str(folder) if pictures else None),
            param_space={"case": tune.choice(list(cases)), "lr": tune.loguniform(1e-4, 1e-1)},
            tune_config=tune.TuneConfig(metric="val_f2", mode="max", num_samples=len(points),
                                        search_alg=BasicVariantGenerator(points_to_evaluate=points),
                                        max_concurrent_trials=2),
            run_config=tune.RunConfig(name=name, storage_path=str(folder / "ray"), callbacks=[callback],
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
    return TinySearch(folder=folder, tracking_uri=uri, name=name, space_file=space_file,
                      parent_run_id=search.run_id, results=results)


def ensure_ray() -> None:
    """Start one 2-CPU local Ray for the whole test process (shut down at exit) unless one runs."""
    import atexit

    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        atexit.register(ray.shutdown)


@functools.cache
def shared_search() -> TinySearch:
    """One tiny search per test process (the tracking and export tests read the same one)."""
    import atexit
    import shutil

    ensure_ray()
    folder = Path(tempfile.mkdtemp(prefix="motorsearch-tracking-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return run_tiny_search(folder)


@pytest.fixture(scope="module")
def search() -> TinySearch:
    """The shared tiny search (fixture of the tracking and export tests, via ``pytest_plugins``)."""
    return shared_search()


@pytest.fixture(scope="module")
def client(search: TinySearch) -> Any:
    """An MLflow client of the shared tiny search's tracking database."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(search.tracking_uri)


def checkpoint_model_file(search: TinySearch, case: str, epoch: int) -> Path:
    """The model file Ray stored for ``case`` at ``epoch`` (in the Ray storage path)."""
    for result in search.results:
        if result.config["case"] != case:
            continue
        for checkpoint, metrics in result.best_checkpoints:
            if metrics["epoch"] == epoch:
                return Path(checkpoint.path) / "model.pt"
    raise LookupError(f"no checkpoint of {case} at epoch {epoch}")


def trial_runs_by_case(search: TinySearch, client: Any) -> dict[str, Any]:
    """The search's child (trial) runs keyed by the trainable's ``case`` parameter."""
    import json

    from motorsearch.tracking import schema

    experiment = client.get_experiment_by_name(search.name)
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{search.parent_run_id}'")
    return {json.loads(run.data.tags[schema.PARAMS_JSON])["case"]: run for run in runs}
