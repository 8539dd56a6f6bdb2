"""Reading a search back from MLflow: which search, its ranked trials, and parameter importance.

The ranking is :func:`motorsearch.tracking.schema.rank_key` (finished trials first, then by the
search's objective, e.g. ``best_val_f2``; ties to the earlier epoch, then the earlier trial): MLflow
orders by the objective itself (``mlflow.search_runs(order_by=schema.order_by(...))``, as the
MLflow UI does when sorted by that column) and the status groups are kept in that order.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from motorsearch.environment import restored
from motorsearch.errors import ConfigError, InputError
from motorsearch.objective import Objective
from motorsearch.registry import did_you_mean
from motorsearch.tracking import schema
from motorsearch.tracking.drivers import settle_dead_searches
from motorsearch.tracking.uri import ENV_VAR, check_tracking_uri, describe_origin, resolve_tracking_uri

RANKED_STATUSES = (schema.FINISHED, schema.EARLY_STOPPED)  # trials that enter the importance study


def tracking_client(tracking_uri: str | None) -> MlflowClient:
    """A client for the resolved tracking URI of an existing store, after the fast reachability check."""
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, origin=describe_origin(tracking_uri), must_exist=True)
    return MlflowClient(uri)


def find_search(client: MlflowClient, experiment_name: str | None) -> Any:
    """The parent run of the latest search in ``experiment_name`` (any experiment when None).

    InputError for an unknown experiment (with did-you-mean over the existing names) or one
    without a motorsearch search in it. A running search whose driver died is marked interrupted
    first (:func:`~motorsearch.tracking.drivers.settle_dead_searches`).
    """
    if experiment_name is None:
        experiments = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in experiments] or ["0"], max_results=1,
                                  filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'",
                                  order_by=["attributes.start_time DESC"]) if experiments else []
        if not runs:
            raise InputError(f"no motorsearch search found at tracking URI {client.tracking_uri}; run "
                             "`python -m motorsearch run SPACE.yaml` first or pass --tracking-uri.")
        return _settled(client, runs[0])
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        names = [e.name for e in client.search_experiments()]
        listed = ", ".join(sorted(names)) or "none"
        raise InputError(f"--experiment {experiment_name!r}: no such MLflow experiment at {client.tracking_uri} "
                         f"(experiments: {listed}).{did_you_mean(experiment_name, names)}")
    runs = client.search_runs([experiment.experiment_id], max_results=1,
                              filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise InputError(f"--experiment {experiment_name!r} holds no motorsearch search (no run tagged "
                         f"{schema.ROLE}={schema.ROLE_SEARCH}).")
    return _settled(client, runs[0])


def _settled(client: MlflowClient, search: Any) -> Any:
    if settle_dead_searches(client, search.info.experiment_id):
        return client.get_run(search.info.run_id)  # its status may have changed
    return search


def get_run(client: MlflowClient, run_id: str) -> Any:
    """The run ``run_id``; InputError when the tracking server has no such run."""
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as exc:
        raise InputError(f"--run-id {run_id!r}: no such MLflow run at {client.tracking_uri} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}).") from None


def leaderboard(client: MlflowClient, search: Any) -> pd.DataFrame:
    """Every trial of the search ``search`` (its parent run), best first.

    Columns: ``rank`` (1 = best), ``run_id``, ``trial_id``, ``status``, the objective (e.g.
    ``best_val_f2``) and its epoch (``best_epoch``), ``last_epoch``, then one column per sampled
    parameter (MLflow's string form). Within a status, trials without a value of the objective
    (errored before validating) come last.
    """
    objective = search_objective(search)
    experiment = client.get_experiment(search.info.experiment_id)
    with _tracking_uri(client.tracking_uri):
        frame = mlflow.search_runs(
            experiment_names=[experiment.name],
            filter_string=f"tags.mlflow.parentRunId = '{search.info.run_id}'",
            order_by=schema.order_by(objective.value_key, objective.epoch_key, objective.mode))
    if f"tags.{schema.ROLE}" in frame:  # the search's trials, not confirmations or refits
        frame = frame[frame[f"tags.{schema.ROLE}"] == schema.ROLE_TRIAL].copy()
    value = objective.value_key
    columns = {"run_id": "run_id", f"tags.{schema.TRIAL_ID}": "trial_id", f"tags.{schema.STATUS}": "status",
               f"metrics.{value}": value, f"metrics.{objective.epoch_key}": objective.epoch_key,
               f"metrics.{schema.LAST_EPOCH}": schema.LAST_EPOCH}
    confirmation = search.data.tags.get(schema.CONFIRMATION)
    if confirmation and f"tags.{schema.CONFIRMATION}" in frame:  # only the search's latest confirmation counts
        current = frame[f"tags.{schema.CONFIRMATION}"] == confirmation
        for name in (schema.confirmed_key(value), schema.confirmed_key(value) + "_std", schema.CONFIRMED_FOLDS,
                     schema.CONFIRMED_RANK):
            if f"metrics.{name}" in frame:
                frame[f"metrics.{name}"] = frame[f"metrics.{name}"].where(current)
            columns[f"metrics.{name}"] = name
    table = pd.DataFrame({new: frame[old] if old in frame else pd.Series([math.nan] * len(frame), dtype=float)
                          for old, new in columns.items()})
    # the trials' own parameters (confirmation and refit runs, filtered out above, have others)
    for column in sorted(c for c in frame.columns if c.startswith("params.") and frame[c].notna().any()):
        table[column.removeprefix("params.")] = frame[column]
    group = table["status"].map(lambda status: schema.STATUS_RANK.get(status, len(schema.STATUS_RANK)))
    table = (table.assign(_group=group, _missing=table[value].isna())
             .sort_values(["_group", "_missing"], kind="stable").drop(columns=["_group", "_missing"])
             .reset_index(drop=True))
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def param_columns(table: pd.DataFrame) -> list[str]:
    """The sampled parameters' columns of a :func:`leaderboard` table."""
    return [c for c in table.columns[table.columns.get_loc(schema.LAST_EPOCH) + 1:]
            if not c.startswith(schema.CONFIRMED_PREFIX)]


def confirmed_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`leaderboard` that the search's latest confirmation ranked, in its order
    (``confirmed_rank``; see :mod:`motorsearch.search.confirm`); empty without a confirmation."""
    if schema.CONFIRMED_RANK not in table:
        return table.iloc[0:0]
    return table[table[schema.CONFIRMED_RANK].notna()].sort_values(schema.CONFIRMED_RANK, kind="stable")


def export_ranking(table: pd.DataFrame, objective: Objective) -> tuple[pd.DataFrame, str]:
    """The trials ``export`` picks from, best first, and how they are ranked: the confirmed ranking
    when the search has one, else the finished trials by the search's objective."""
    confirmed = confirmed_trials(table)
    if len(confirmed):
        folds = int(confirmed[schema.CONFIRMED_FOLDS].max())
        return confirmed, f"confirmed: mean {objective.value_key} over {folds} folds"
    return finished_trials(table, objective), f"{objective.value_key} on the search's validation fold"


def search_objective(search: Any) -> Objective:
    """The objective recorded on a search's parent run (tags metric, mode, objective)."""
    tags = search.data.tags
    try:
        return Objective(tags.get(schema.METRIC) or "", tags.get(schema.MODE) or "",
                         tags.get(schema.OBJECTIVE, "best"))
    except ConfigError:
        raise InputError(f"run {search.info.run_id} is not a motorsearch search run (tags {schema.METRIC}/"
                         f"{schema.MODE}/{schema.OBJECTIVE} missing or wrong).") from None


def finished_trials(table: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """The rows of :func:`leaderboard` that ``export`` may pick, best first: finished, with a value."""
    return table[(table["status"] == schema.FINISHED) & table[objective.value_key].notna()]


@dataclass
class RankedSearch:
    """A search read back for the final pick: its parent run, objective, experiment name, every trial
    (:func:`leaderboard`) and those ``export`` picks from, best first, with how they are ranked
    (:func:`export_ranking`)."""

    search: Any
    objective: Objective
    name: str
    table: pd.DataFrame
    ranked: pd.DataFrame
    ranking: str


def rank_search(client: MlflowClient, search: Any) -> RankedSearch:
    """The :class:`RankedSearch` of the search whose parent run is ``search``."""
    objective = search_objective(search)
    table = leaderboard(client, search)
    ranked, ranking = export_ranking(table, objective)
    return RankedSearch(search=search, objective=objective, name=client.get_experiment(search.info.experiment_id).name,
                        table=table, ranked=ranked, ranking=ranking)


def trial_config(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The whole experiment config a trial run trained (its ``config.yaml`` artifact), as a nested dict.
    InputError when the run has none that reads as one."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="motorsearch-config-") as tmp:
        try:
            path = client.download_artifacts(run_id, schema.CONFIG_ARTIFACT, tmp)
            config = yaml.safe_load(Path(path).read_text())
        except Exception as exc:  # MLflow, I/O or YAML errors alike: the run cannot be trained again
            raise InputError(f"trial run {run_id} has no readable {schema.CONFIG_ARTIFACT} artifact "
                             f"({type(exc).__name__}); its configuration cannot be trained again.") from None
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise InputError(f"trial run {run_id}: {schema.CONFIG_ARTIFACT} is not an experiment config.")
    return config


def top_configs(experiment_name: str, k: int, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Warm start: the sampled parameters of the ``k`` best ranked trials of the latest search in
    ``experiment_name``, typed as they were sampled, for OptunaSearch ``points_to_evaluate``.

    Finished and early-stopped trials with a value of the metric count; errored ones do not.
    """
    if k < 1:
        raise InputError(f"`k` must be at least 1, but got k={k}.")
    client = tracking_client(tracking_uri)
    search = find_search(client, experiment_name)
    table = leaderboard(client, search)
    value = search_objective(search).value_key
    ranked = table[table["status"].isin(RANKED_STATUSES) & table[value].notna()]
    configs = []
    for run_id in ranked["run_id"].head(k):
        configs.append(json.loads(client.get_run(run_id).data.tags.get(schema.PARAMS_JSON, "{}")))
    return configs


# ---------------------------------------------------------------------- end of search


def log_search_summary(client: MlflowClient, parent_run_id: str, *, objective: Objective,
                       study_storage: str | None = None, study_name: str | None = None) -> pd.DataFrame:
    """Sum a search up on its parent run, for a reader of the MLflow UI.

    Logs ``leaderboard.csv``, ``pictures/param_importance.png``, the tag ``best_run_id``, the
    metrics of :data:`schema.TRIAL_COUNTS` and, when a trial finished, the best finished trial's
    objective under its own name (``best_val_f2``, the value ``export`` picks by), and a markdown
    description (:func:`search_description`). Returns the search's :func:`leaderboard`.
    """
    search = client.get_run(parent_run_id)
    table = leaderboard(client, search)
    finished = finished_trials(table, objective)
    now = int(time.time() * 1000)
    counts = table["status"].value_counts()
    summary = [Metric(name, float(counts.get(status, 0)), now, 0) for status, name in schema.TRIAL_COUNTS.items()]
    if len(finished):
        client.set_tag(parent_run_id, schema.BEST_RUN, str(finished["run_id"].iloc[0]))
        summary.append(Metric(objective.value_key, float(finished[objective.value_key].iloc[0]), now, 0))
    client.log_batch(parent_run_id, metrics=summary)
    client.set_tag(parent_run_id, schema.NOTE, search_description(client, search, table, objective=objective))
    with tempfile.TemporaryDirectory(prefix="motorsearch-search-") as tmp:
        csv = Path(tmp) / schema.LEADERBOARD_CSV
        table.to_csv(csv, index=False)
        client.log_artifact(parent_run_id, str(csv))
        study = load_study(study_storage, study_name) if study_storage and study_name else None
        if study is None or not _complete_trials(study):
            study = importance_study(client, table, objective=objective)
        if study is not None:
            picture = param_importance_png(study, Path(tmp) / "param_importance.png")
            if picture is not None:
                client.log_artifact(parent_run_id, str(picture), str(Path(schema.IMPORTANCE_PNG).parent))
    return table


def search_description(client: MlflowClient, search: Any, table: pd.DataFrame, *, objective: Objective,
                       top: int = 10) -> str:
    """The parent run's markdown description: the best finished trial and the ``top`` rows of the
    leaderboard ``table``, each trial linked to its run page."""
    names = {run.info.run_id: run.info.run_name for run in client.search_runs(
        [search.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{search.info.run_id}'")}
    link = "#/experiments/{}/runs/{}".format
    value, epoch = objective.value_key, objective.epoch_key
    finished = finished_trials(table, objective)
    lines = [f"Search `{client.get_experiment(search.info.experiment_id).name}`: {len(table)} trials ranked by "
             f"`{value}` ({objective.mode}), finished trials first.", ""]
    if len(finished):
        best = finished.iloc[0]
        lines += [f"Best finished trial: [{names.get(best['run_id'], best['run_id'])}]"
                  f"({link(search.info.experiment_id, best['run_id'])}), `{value}` = {best[value]:.4g} at epoch "
                  f"{best[epoch]:.0f}; its model: artifact `{schema.BEST_MODEL}`.", ""]
    else:
        lines += ["No trial finished, so none can be exported.", ""]
    lines += [f"| # | trial | {value} | epoch | status |", "|---|---|---|---|---|"]
    for row in table.head(top).to_dict("records"):
        shown = "" if pd.isna(row[value]) else f"{row[value]:.4g}"
        at = "" if pd.isna(row[epoch]) else f"{row[epoch]:.0f}"
        trial = f"[{names.get(row['run_id'], row['run_id'])}]({link(search.info.experiment_id, row['run_id'])})"
        lines.append(f"| {row['rank']} | {trial} | {shown} | {at} | {row['status']} |")
    if len(table) > top:
        lines.append(f"\n{len(table) - top} more in artifact `{schema.LEADERBOARD_CSV}`.")
    return "\n".join(lines)


def load_study(storage: str, name: str) -> Any:
    """The Optuna study ``name`` in RDB ``storage``, or None if it cannot be read."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except Exception:  # missing file, unknown study name: fall back to the runs
        return None


def importance_study(client: MlflowClient, table: pd.DataFrame, *, objective: Objective) -> Any:
    """An in-memory Optuna study rebuilt from the child runs, or None with fewer than 2 usable trials.

    Used when the search's own study is not available (no persistent storage). Each finished or
    early-stopped trial becomes a COMPLETE trial with the objective as value and its sampled
    parameters (typed, from the ``motorsearch.params_json`` tag). Distributions are inferred
    from the values seen: strings/bools -> categorical; ints -> int range; floats -> float range,
    log-scaled when all are positive and span at least a factor 100. Parameters that never vary
    are left out (they cannot matter).
    """
    import optuna

    rows = table[table["status"].isin(RANKED_STATUSES) & table[objective.value_key].notna()]
    samples = [(json.loads(client.get_run(run_id).data.tags.get(schema.PARAMS_JSON, "{}")), float(value))
               for run_id, value in zip(rows["run_id"], rows[objective.value_key], strict=True)]
    samples = [(params, value) for params, value in samples if math.isfinite(value)]
    distributions = _infer_distributions([params for params, _ in samples])
    if len(samples) < 2 or not distributions:
        return None
    study = optuna.create_study(direction=objective.direction)
    for params, value in samples:
        kept = {k: v for k, v in params.items() if k in distributions}
        study.add_trial(optuna.trial.create_trial(
            params=kept, distributions={k: distributions[k] for k in kept}, value=value))
    return study


def param_importance_png(study: Any, path: Path) -> Path | None:
    """Bar chart of ``optuna.importance.get_param_importances(study)``; None when Optuna cannot compute it."""
    import optuna
    from matplotlib.figure import Figure

    from motorsearch.evaluation.pictures import save_png

    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. too few trials or no varying parameter
        return None
    if not importances:
        return None
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.5), layout="constrained")
    axis = fig.subplots()
    axis.barh(names, [importances[n] for n in names], color="tab:blue")
    axis.set_xlabel("importance (Optuna, default evaluator)")
    axis.set_title(f"parameter importance over {len(_complete_trials(study))} trials")
    return save_png(fig, path)


def _infer_distributions(samples: list[dict[str, Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values: dict[str, list[Any]] = {}
    for params in samples:
        for key, value in params.items():
            values.setdefault(key, []).append(value)
    distributions = {}
    for key, seen in values.items():
        unique = list(dict.fromkeys(seen))
        if len(unique) < 2:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in unique):
            low, high = min(unique), max(unique)
            if all(isinstance(v, int) for v in unique):
                distributions[key] = IntDistribution(int(low), int(high))
            else:
                distributions[key] = FloatDistribution(float(low), float(high), log=low > 0 and high / low >= 100)
        elif all(v is None or isinstance(v, (bool, int, float, str)) for v in unique):
            distributions[key] = CategoricalDistribution(unique)
    return distributions


def _complete_trials(study: Any) -> list[Any]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.search_runs`` reads the global tracking URI: set it for the call, then restore it
    (MLflow's own helper for this is private; mlflow is pinned below 3.19 in pyproject.toml).
    MLflow mirrors the global URI into ``MLFLOW_TRACKING_URI`` and unsets the variable when it
    restores "no URI": the user's variable is put back as it was."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with restored(ENV_VAR), _use_tracking_uri(uri):
        yield
