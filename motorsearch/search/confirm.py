"""Confirmation: a search's top-K configurations trained again on the other folds, ranked by the mean.

A search ranks its trials on one validation fold, and one fold's ranking is noisy (near-identical
configurations scored F2 0.685-0.806 on one fold in the seed project). The confirmation takes the
K best finished trials of a search (its leaderboard order) and trains each configuration again with
``data.fold`` set to each other fold asked for: Ray trials with the search's resources, in
parallel, restarted after a failure like any trial (``max_failures``), each logged as a child run
of the search's parent run (role ``confirmation``, tags ``motorsearch.fold`` and
``motorsearch.candidate_run_id``) with its curves and best model file.

A candidate's confirmed score is the mean of the search's objective (``best_val_f2`` by default)
over all its folds, the search's own fold included, with the sample standard deviation (the
spread). Candidates are ranked by the mean; one that lost a fold (errored after its restarts)
ranks after every complete one; ties go to the better place on the search's leaderboard. The
ranking is logged on the candidates' own search runs (metrics ``confirmed_best_val_f2``, ``_std``,
``confirmed_folds``, ``confirmed_rank``; tag ``motorsearch.confirmation``) and on the parent run
(the same tag, artifact ``confirmation.csv``, a table in its description). ``best`` and ``export``
then rank by it and say so; a later confirmation of the same search replaces it.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from motorsearch.config import from_dict
from motorsearch.errors import ConfigError, InputError
from motorsearch.objective import Objective, sort_sign
from motorsearch.search.space import Resources, SearchSpace, is_uri
from motorsearch.tracking import schema

ALL_FOLDS = "all"


@dataclass(frozen=True)
class Candidate:
    """One configuration to confirm: a finished trial of the search."""

    run_id: str
    trial_id: str
    name: str  # its MLflow run name
    params: dict[str, Any]  # the sampled values
    config: dict[str, Any]  # the whole experiment config it trained (config.yaml of its run)
    fold: int  # the search's validation fold
    value: float  # the objective on that fold


@dataclass(frozen=True)
class Job:
    """One confirmation trial: candidate ``candidate`` (an index) validated on ``fold``."""

    candidate: int
    fold: int


@dataclass
class ConfirmPlan:
    """Everything a confirmation needs, checked before anything starts or is written."""

    experiment_name: str
    experiment_id: str
    search_run_id: str
    tracking_uri: str
    objective: Objective
    candidates: list[Candidate]
    jobs: list[Job]
    resources: dict[str, float]
    max_concurrent: int | None
    max_failures: int
    storage_path: str
    address: str | None

    def job_config(self, job: Job) -> dict[str, Any]:
        """The config ``job`` trains: its candidate's, validated on the job's fold."""
        config = json.loads(json.dumps(self.candidates[job.candidate].config))
        config.setdefault("data", {})["fold"] = job.fold
        return config


def parse_folds(text: str | Sequence[int] | None) -> list[int] | None:
    """``"all"`` (or None) -> None; ``"1,3"`` or ``[1, 3]`` -> [1, 3]. ConfigError names ``--folds``."""
    if text is None or (isinstance(text, str) and text.strip().lower() == ALL_FOLDS):
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        folds = [int(str(item).strip()) for item in items]
    except ValueError:
        raise ConfigError(f"`--folds` must be 'all' or fold numbers separated by commas, e.g. 1,2, but got "
                          f"--folds={text!r}.") from None
    if not folds or len(set(folds)) != len(folds):
        raise ConfigError(f"`--folds` must list each fold once, but got --folds={text!r}.")
    return folds


def plan_confirmation(client: Any, search: Any, *, top_k: int, folds: list[int] | None = None,
                      resources: dict[str, float] | None = None, max_concurrent: int | None = None,
                      max_failures: int | None = None, storage_path: str | None = None,
                      address: str | None = None) -> ConfirmPlan:
    """The confirmation of ``search`` (its parent run): the ``top_k`` best finished trials, each on
    ``folds`` (None: every fold) but its own. Settings left None are the search's (its parent run's
    parameters and tags). InputError/ConfigError for anything that would make it fail later."""
    from motorsearch.tracking.leaderboard import finished_trials, leaderboard, search_objective

    if top_k < 1:
        raise ConfigError(f"`--top` must be at least 1, but got --top={top_k}.")
    objective = search_objective(search)
    experiment = client.get_experiment(search.info.experiment_id)
    finished = finished_trials(leaderboard(client, search), objective)
    if len(finished) < top_k:
        raise InputError(f"experiment {experiment.name!r} (search run {search.info.run_id}) has {len(finished)} "
                         f"finished trial(s) with a value of {objective.value_key}, fewer than --top {top_k}.")
    candidates = [_candidate(client, row, objective) for row in finished.head(top_k).to_dict("records")]
    jobs = []
    for index, candidate in enumerate(candidates):
        n_folds = int(candidate.config["data"]["n_folds"])
        for fold in folds if folds is not None else range(n_folds):
            if not 0 <= fold < n_folds:
                raise ConfigError(f"`--folds`: fold {fold} is out of range; trial {candidate.trial_id} has "
                                  f"data.n_folds={n_folds} (folds 0 to {n_folds - 1}).")
            if fold != candidate.fold:
                jobs.append(Job(index, fold))
    if not jobs:
        raise ConfigError(f"`--folds` leaves nothing to confirm: {folds} is only the search's own validation fold.")

    params, tags = search.data.params, search.data.tags
    plan = ConfirmPlan(
        experiment_name=experiment.name, experiment_id=experiment.experiment_id, search_run_id=search.info.run_id,
        tracking_uri=client.tracking_uri, objective=objective, candidates=candidates, jobs=jobs,
        resources=resources or _json(params.get("resources"), {"cpu": 1.0, "gpu": 0.0}),
        max_concurrent=max_concurrent if max_concurrent is not None else _json(params.get("max_concurrent"), None),
        max_failures=max_failures if max_failures is not None else SearchSpace.max_failures,
        storage_path=storage_path or tags.get(schema.STORAGE_PATH) or str(Path("runs").resolve()),
        address=address if address is not None else _address(tags.get(schema.RAY_ADDRESS)))
    for job in jobs:  # every config must load before a trial starts
        from_dict(plan.job_config(job), source=f"trial {candidates[job.candidate].trial_id} on fold {job.fold}")
    return plan


def run_confirmation(plan: ConfirmPlan, *, out: Any = None) -> pd.DataFrame:
    """Train the plan's jobs as Ray trials, log them, rank the candidates; returns :func:`confirmation_table`."""
    from ray import tune

    from motorsearch.environment import restored
    from motorsearch.search.cluster import check_request, check_storage, connect_ray, dashboard_message
    from motorsearch.search.runner import NO_AUTO_LOGGERS, REUSE_ACTORS, result_loggers, trial_dirname
    from motorsearch.tracking.search_runs import TrialTracker

    out = out or sys.stdout
    resources = Resources(cpu=float(plan.resources.get("cpu", 1.0)), gpu=float(plan.resources.get("gpu", 0.0)))
    cluster = connect_ray(plan.address)
    print(dashboard_message(cluster), file=out)
    check_request(resources, cluster.nodes)
    check_storage(plan.storage_path, shared=False, nodes=cluster.nodes)
    name = f"{plan.experiment_name}-confirm-{time.strftime('%Y%m%d-%H%M%S')}"
    root = f"{plan.storage_path.rstrip('/')}/{name}"
    setup = ConfirmSetup(configs=tuple(plan.job_config(job) for job in plan.jobs), objective=plan.objective,
                         cpus=resources.cpu, trial_root=None if is_uri(root) else root)
    tracker = TrialTracker(tracking_uri=plan.tracking_uri, experiment_id=plan.experiment_id,
                           parent_run_id=plan.search_run_id, objective=plan.objective,
                           resolve_config=JobConfigs(setup.configs), labels=JobLabels.of(plan))
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(confirm_trial, setup=setup), resources.as_ray()),
        param_space={"job": tune.grid_search(list(range(len(plan.jobs))))},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=plan.max_concurrent,
                                    trial_dirname_creator=trial_dirname, reuse_actors=REUSE_ACTORS),
        run_config=tune.RunConfig(name=name, storage_path=plan.storage_path, callbacks=result_loggers([tracker]),
                                  failure_config=tune.FailureConfig(max_failures=plan.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=SearchSpace.checkpoints_to_keep,
                                      checkpoint_score_attribute=plan.objective.metric,
                                      checkpoint_score_order=plan.objective.mode),
                                  verbose=1))
    print(f"confirming {len(plan.candidates)} configuration(s) of {plan.experiment_name!r} on "
          f"{len(plan.jobs)} fold run(s); results in {root}", file=out)
    try:
        with restored(NO_AUTO_LOGGERS, "1"):
            results = tuner.fit()
    finally:
        tracker.close()
    scores: dict[tuple[int, int], float | None] = {}
    for result in results:
        job = plan.jobs[int((result.config or {})["job"])]
        value = (result.metrics or {}).get(plan.objective.value_key)
        ok = result.error is None and value is not None and math.isfinite(float(value))
        scores[(job.candidate, job.fold)] = float(value) if ok else None
    table = confirmation_table(plan, scores)
    log_confirmation(plan, table, confirmation=name)
    return table


def confirmation_table(plan: ConfirmPlan, scores: dict[tuple[int, int], float | None]) -> pd.DataFrame:
    """One row per candidate, in the confirmed ranking: ``confirmed_rank``, ``run_id``, ``trial_id``,
    ``name``, ``fold_<k>`` (the objective on fold k; the search's fold from the search), the mean
    (``confirmed_<objective>``), its ``_std`` and ``confirmed_folds`` (folds with a value)."""
    key = schema.confirmed_key(plan.objective.value_key)
    n_folds = max(int(c.config["data"]["n_folds"]) for c in plan.candidates)
    rows = []
    for index, candidate in enumerate(plan.candidates):
        asked = [candidate.fold] + [job.fold for job in plan.jobs if job.candidate == index]
        per_fold = {candidate.fold: candidate.value, **{fold: scores.get((index, fold)) for fold in asked[1:]}}
        values = [v for v in per_fold.values() if v is not None]
        row = {"run_id": candidate.run_id, "trial_id": candidate.trial_id, "name": candidate.name,
               "search_rank": index + 1, "search_fold": candidate.fold,
               **{f"fold_{fold}": per_fold.get(fold, math.nan) for fold in range(n_folds)},
               key: float(np.mean(values)), f"{key}_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
               schema.CONFIRMED_FOLDS: len(values), "_lost": len(asked) - len(values)}
        rows.append({k: (math.nan if v is None else v) for k, v in row.items()})
    sign = sort_sign(plan.objective.mode)
    rows.sort(key=lambda r: (r["_lost"], sign * r[key], r["search_rank"]))
    table = pd.DataFrame(rows).drop(columns=["_lost"])
    table.insert(0, schema.CONFIRMED_RANK, range(1, len(table) + 1))
    return table


def log_confirmation(plan: ConfirmPlan, table: pd.DataFrame, *, confirmation: str) -> None:
    """The confirmed ranking on each candidate's search run and on the parent (see the module docstring)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    key = schema.confirmed_key(plan.objective.value_key)
    now = int(time.time() * 1000)
    for row in table.to_dict("records"):
        client.log_batch(row["run_id"], metrics=[
            Metric(name, float(row[name]), now, 0) for name in (key, f"{key}_std", schema.CONFIRMED_FOLDS,
                                                                 schema.CONFIRMED_RANK)],
            tags=[_tag(schema.CONFIRMATION, confirmation)])
    client.set_tag(plan.search_run_id, schema.CONFIRMATION, confirmation)
    note = client.get_run(plan.search_run_id).data.tags.get(schema.NOTE, "")
    note = note.split("\n\n## Confirmed ranking")[0]
    client.set_tag(plan.search_run_id, schema.NOTE, f"{note}\n\n{describe_confirmation(table, plan.objective)}")
    with tempfile.TemporaryDirectory(prefix="motorsearch-confirm-") as tmp:
        csv = Path(tmp) / schema.CONFIRMATION_CSV
        table.to_csv(csv, index=False)
        client.log_artifact(plan.search_run_id, str(csv))


def describe_confirmation(table: pd.DataFrame, objective: Objective) -> str:
    """The confirmed ranking as a markdown table (also printed by ``confirm``)."""
    key = schema.confirmed_key(objective.value_key)
    folds = [c for c in table.columns if c.startswith("fold_")]
    lines = [f"## Confirmed ranking (mean {objective.value_key} over folds, {objective.mode})", "",
             f"| # | trial | mean | spread (sd) | folds | search # | {' | '.join(folds)} |",
             "|" + "---|" * (6 + len(folds))]
    for row in table.to_dict("records"):
        cells = ["" if pd.isna(row[f]) else f"{row[f]:.3f}" for f in folds]
        lines.append(f"| {row[schema.CONFIRMED_RANK]} | {row['name']} | {row[key]:.4f} | {row[key + '_std']:.4f} | "
                     f"{row[schema.CONFIRMED_FOLDS]} | {row['search_rank']} | {' | '.join(cells)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- inside Ray


@dataclass(frozen=True)
class ConfirmSetup:
    """What every confirmation trial needs: the config of each job (indexed by the trial's ``job``)."""

    configs: tuple[dict[str, Any], ...]
    objective: Objective
    cpus: float = 1.0
    trial_root: str | None = None


def confirm_trial(config: dict[str, Any], setup: ConfirmSetup) -> None:
    """Tune function trainable of one job: the search trainable on the job's config."""
    from motorsearch.search.trainable import TrialSetup, train_trial

    train_trial({}, TrialSetup(base=setup.configs[int(config["job"])], objective=setup.objective, cpus=setup.cpus,
                               trial_root=setup.trial_root))


@dataclass(frozen=True)
class JobConfigs:
    """``resolve_config`` of the confirmation's tracker: a trial's whole config from its job index."""

    configs: tuple[dict[str, Any], ...]

    def __call__(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.configs[int(values["job"])]


@dataclass(frozen=True)
class JobLabels:
    """``labels`` of the confirmation's tracker: each run's parameters, tags and name from its job."""

    search_name: str
    entries: tuple[tuple[dict[str, Any], dict[str, str], str], ...]

    @classmethod
    def of(cls, plan: ConfirmPlan) -> JobLabels:
        entries = []
        for job in plan.jobs:
            candidate = plan.candidates[job.candidate]
            tags = {schema.ROLE: schema.ROLE_CONFIRMATION, schema.FOLD: str(job.fold),
                    schema.CANDIDATE: candidate.run_id}
            entries.append(({**candidate.params, "data.fold": job.fold}, tags,
                            f"{candidate.name.split(' ')[0]} {_number(candidate)} on fold {job.fold}"))
        return cls(plan.experiment_name, tuple(entries))

    def __call__(self, values: dict[str, Any]) -> Any:
        from motorsearch.tracking.search_runs import TrialLabels

        params, tags, name = self.entries[int(values["job"])]
        return TrialLabels(params=params, tags=tags, name=name)


def _candidate(client: Any, row: dict[str, Any], objective: Objective) -> Candidate:
    from motorsearch.tracking.leaderboard import trial_config

    run = client.get_run(row["run_id"])
    config = trial_config(client, row["run_id"])
    return Candidate(run_id=row["run_id"], trial_id=str(row["trial_id"]), name=run.info.run_name or row["run_id"],
                     params=json.loads(run.data.tags.get(schema.PARAMS_JSON, "{}")), config=config,
                     fold=int(config["data"].get("fold", 0)), value=float(row[objective.value_key]))


def _number(candidate: Candidate) -> str:
    """``#3`` from a trial run name ``demo #3 loss.name=...`` (the trial id when there is none)."""
    words = candidate.name.split(" ")
    return words[1] if len(words) > 1 and words[1].startswith("#") else candidate.trial_id


def _json(text: str | None, default: Any) -> Any:
    try:
        return json.loads(text) if text is not None else default
    except json.JSONDecodeError:
        return default


def _address(recorded: str | None) -> str | None:
    return None if recorded in (None, "", "local") else recorded


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)
