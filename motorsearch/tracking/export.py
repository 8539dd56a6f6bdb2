"""The final pick: the best finished trial of a search, exported as one verified model file.

Which trial: when the search was confirmed across folds (``confirm``), the top of the confirmed
ranking (mean objective over folds; :mod:`motorsearch.search.confirm`). Otherwise, among the
children of the search (the latest search of ``--experiment``, or the search ``--run-id`` names)
whose status is ``finished`` and that have a value of the search's objective, the first by
:func:`motorsearch.tracking.schema.rank_key` — best objective (``best_<metric>`` by default;
higher for mode max, lower for min); ties to the trial that reached it at the earlier epoch, then
to the one that started first, then to the smaller run id. It is the top row of ``best`` and the
best COMPLETE trial of the search's Optuna study. ``--run-id`` of a trial run exports that trial
whatever its status.

What is written: the trial's best-checkpoint model file (``checkpoints/best/model.pt``),
checked against the sha256 recorded when it was uploaded, installed at ``out``
(:func:`motorsearch.model_file.install_model_file`: an atomic copy, ``out.sha256`` beside it and a
final load that verifies both).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from motorsearch.errors import InputError, ModelFileError
from motorsearch.objective import Objective
from motorsearch.tracking import schema
from motorsearch.tracking.leaderboard import (
    find_search,
    get_run,
    rank_search,
    search_objective,
    top_configs,
    tracking_client,
)

__all__ = ["CHAMPION", "Exported", "Pick", "export_best", "pick_trial", "register_model", "top_configs"]

CHAMPION = "champion"


@dataclass
class Pick:
    """The trial chosen for export."""

    run_id: str
    trial_id: str
    experiment_name: str
    metric: str
    mode: str
    value: float
    status: str
    ranking: str = ""  # how the trial was ranked first, e.g. "confirmed: mean best_val_f2 over 3 folds"


@dataclass
class Exported:
    """What :func:`export_best` wrote: the model file, its checksum file, and the registry version."""

    pick: Pick
    path: Path
    checksum: Path
    sha256: str
    registered_version: str | None = None


def pick_trial(client: MlflowClient, *, experiment_name: str | None = None, run_id: str | None = None) -> Pick:
    """The trial to export (see the module docstring). InputError: unknown experiment or run id,
    a run that is not a motorsearch run, or a search without finished trials."""
    if experiment_name is not None and run_id is not None:
        raise InputError("give --experiment or --run-id, not both.")
    if run_id is not None:
        run = get_run(client, run_id)
        role = run.data.tags.get(schema.ROLE)
        if role == schema.ROLE_TRIAL:
            return _pick_of_trial(client, run)
        if role != schema.ROLE_SEARCH:
            raise InputError(f"--run-id {run_id!r} is not a motorsearch search or trial run "
                             f"(tag {schema.ROLE}={role!r}).")
        search = run
    else:
        search = find_search(client, experiment_name)
    read = rank_search(client, search)
    objective, table, ranked, ranking, name = read.objective, read.table, read.ranked, read.ranking, read.name
    if ranked.empty:
        counts = table["status"].fillna("unknown").value_counts().to_dict()
        seen = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
        raise InputError(f"experiment {name!r} (search run {search.info.run_id}) has no finished trial with a "
                         f"value of {objective.value_key!r} to export ({seen}); export a given trial with --run-id.")
    row = ranked.iloc[0]
    metric = schema.confirmed_key(objective.value_key) if ranking.startswith("confirmed") else objective.value_key
    return Pick(run_id=str(row["run_id"]), trial_id=str(row["trial_id"]), experiment_name=name,
                metric=metric, mode=objective.mode, value=float(row[metric]), status=str(row["status"]),
                ranking=ranking)


def export_best(out: str | Path, *, experiment_name: str | None = None, run_id: str | None = None,
                register: str | None = None, tracking_uri: str | None = None) -> Exported:
    """Pick the trial, write its best model file to ``out`` (+ ``out.sha256``), optionally register it.

    ``register``: also create a version of registered model ``register`` in the MLflow Model
    Registry from the trial's artifact and point the alias ``champion`` at it.
    """
    from motorsearch.model_file import file_sha256, install_model_file

    out = check_out_path(out)
    client = tracking_client(tracking_uri)
    pick = pick_trial(client, experiment_name=experiment_name, run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="motorsearch-export-") as tmp:
        downloaded = fetch_best_model(client, pick.run_id, Path(tmp))
        actual = file_sha256(downloaded)
        checksum = install_model_file(downloaded, out)
    exported = Exported(pick=pick, path=out, checksum=checksum, sha256=actual)
    if register:
        exported.registered_version = register_model(client, register, pick, sha256=actual)
    return exported


def check_out_path(out: str | Path) -> Path:
    """``--out`` as a Path: InputError for a folder or a file in a folder that does not exist."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give a file name such as best.pt.")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist.")
    return out


def fetch_best_model(client: MlflowClient, run_id: str, folder: Path) -> Path:
    """Download a trial run's best model file into ``folder``, checked against the sha256 recorded
    when it was uploaded and loaded once (a foreign, truncated or changed file is refused)."""
    from motorsearch.model_file import file_sha256, load_model_file

    expected = client.get_run(run_id).data.tags.get(schema.BEST_MODEL_SHA256)
    downloaded = _download_best(client, run_id, folder)
    actual = file_sha256(downloaded)
    if expected and actual != expected:
        raise ModelFileError(f"run {run_id}: artifact {schema.BEST_MODEL} has sha256={actual}, but "
                             f"sha256={expected} was recorded when it was logged; it was changed or damaged.")
    load_model_file(downloaded)
    return downloaded


def register_model(client: MlflowClient, name: str, pick: Pick, *, sha256: str,
                   artifact: str = schema.BEST_MODEL) -> str:
    """New version of registered model ``name`` from the model file ``artifact`` of run ``pick.run_id``
    (a trial's best model by default); alias ``champion`` -> it."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="motorsearch flagellar-motor detector (model file: "
                                                         "model.pt, load with motorsearch.model_file)")
    source = f"{client.get_run(pick.run_id).info.artifact_uri.rstrip('/')}/{Path(artifact).parent}"
    version = client.create_model_version(
        name, source=source, run_id=pick.run_id,
        tags={"sha256": sha256, "metric": pick.metric, "value": repr(pick.value), "trial_id": pick.trial_id},
        description=f"{pick.experiment_name} trial {pick.trial_id}: {pick.metric}={pick.value:g}")
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)


def _pick_of_trial(client: MlflowClient, run: Any) -> Pick:
    parent_id = run.data.tags.get(schema.PARENT)
    search = get_run(client, parent_id) if parent_id else None
    objective = search_objective(search) if search else Objective(run.data.tags.get(schema.METRIC, "val_f2"),
                                                                  run.data.tags.get(schema.MODE, "max"))
    value = run.data.metrics.get(objective.value_key, float("nan"))
    return Pick(run_id=run.info.run_id, trial_id=run.data.tags.get(schema.TRIAL_ID, ""),
                experiment_name=client.get_experiment(run.info.experiment_id).name, metric=objective.value_key,
                mode=objective.mode, value=float(value), status=run.data.tags.get(schema.STATUS, "unknown"))


def _download_best(client: MlflowClient, run_id: str, folder: Path) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        path = client.download_artifacts(run_id, schema.BEST_MODEL, str(folder))
    except (MlflowException, OSError) as exc:
        raise InputError(f"run {run_id} has no {schema.BEST_MODEL} artifact (the trial never saved a checkpoint, "
                         f"or its upload failed): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         ) from None
    return Path(path)
