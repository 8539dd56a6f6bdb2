"""Run a search: Ray Tune + OptunaSearch (+ ASHA) over a loaded :class:`SearchSpace`.

``run_search(space)`` refuses what can be refused before anything is written or Ray starts
(:func:`check_search`: the name, ``resume``, warm-start points, resources of the local Ray it would
start), prepares the data caches once and starts or joins Ray (:func:`prepare_search`, which
refuses unreadable data before a local Ray starts, and requests no node of a joined cluster can
run), assembles the Tuner and runs it; it returns a :class:`SearchOutcome` with Tune's ResultGrid
and a leaderboard. A caller that writes elsewhere first (MLflow) calls the first two itself and
passes the cluster in. Tune keeps everything under ``<storage_path>/<name>/``;
the Optuna study, a mirror of the trials, is described in :mod:`motorsearch.search.study`.
Every trial runs in a process of its own (no actor reuse).

``resume=True`` continues an interrupted search of the same name: finished trials are kept,
unfinished and errored ones continue from their last checkpoint, and only the remaining samples
are drawn. An epoch budget (``budget_epochs``) then counts only the trials that report after the
resume, each charged its highest epoch, so a resumed search may spend more than the budget in all.
``callbacks`` (Tune callbacks, e.g. experiment tracking) must be picklable: Tune saves them with
the experiment; on resume the ones given now replace the saved ones.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motorsearch.environment import folder_problem, restored
from motorsearch.errors import ConfigError, InputError
from motorsearch.search.cluster import (
    ClusterInfo,
    check_request,
    check_storage,
    connect_ray,
    dashboard_message,
    local_node,
)
from motorsearch.search.space import SearchSpace, is_uri
from motorsearch.search.study import make_searcher, remove_stale_study, reopen_waiting, settle_study, study_url
from motorsearch.search.trainable import TrialSetup, fault_epoch_from_env, fault_raise_from_env, train_trial
from motorsearch.tracking import schema

_CACHE_KEYS = ("data.root", "data.format", "data.labels", "data.labels_unit", "data.spacing", "data.source_spacing",
               "data.cache_dir", "data.synthetic.n_train", "data.synthetic.n_test", "data.synthetic.seed",
               "data.synthetic.difficulty")
_MAX_PREPARED_VARIANTS = 16
_UNFINISHED = frozenset({"PENDING", "RUNNING", "PAUSED"})  # Tune trial statuses of a search stopped midway
# A new process per trial. Reusing a finished trial's process saves its start-up (measured in
# benchmarks/bench_endings.py), but a function trainable cannot reset itself, and Ray's reuse
# after an ASHA stop errored the next trial ("Could not re-use actor") or hung the whole search.
REUSE_ACTORS = False
# Tune adds a TensorBoard logger unless this is "1", and then prints a `tensorboard --logdir` hint
# for a tool the project does not install; the CSV and JSON loggers results rely on are added by
# `result_loggers` instead.
NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


@dataclass
class LeaderboardRow:
    """One trial: its objective (``value``), the epoch it comes from, and that epoch's checkpoint."""

    trial_id: str
    value: float | None
    epoch: int | None
    epochs_run: int
    status: str
    params: dict[str, Any]
    checkpoint: str | None
    path: str


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search leaves: Tune's results and the ranked trials."""

    results: Any  # ray.tune.ResultGrid
    leaderboard: list[LeaderboardRow]
    experiment_path: str
    study_storage: str
    cluster: ClusterInfo
    complete: bool = True  # False when interrupted: continue with resume=True
    spent_epochs: int = 0  # trial-epochs trained: each trial's highest reported epoch, summed
    budget_spent: bool = False  # the search ended on its epoch budget (``budget_epochs``)

    @property
    def best(self) -> LeaderboardRow | None:
        """The trial ``export`` would pick: the top finished trial with a value."""
        return _exportable(self.leaderboard)


def check_search(space: SearchSpace, *, resume: bool = False, points_to_evaluate: list[dict] | None = None) -> None:
    """Raise InputError for a search that cannot run, before Ray starts and before anything is written:
    warm-start points that are not sampled values, a name already taken (without ``resume``) or
    nothing to resume (with it), a results or cache folder that cannot be made, and for a local Ray not yet started, a trial request larger than
    what that Ray will offer (Ray's own CPU and GPU detection)."""
    import ray
    from ray import tune

    _check_points(space, points_to_evaluate)
    path = space.experiment_path
    restorable = tune.Tuner.can_restore(path)
    if resume and not restorable:
        raise InputError(f"--resume: no search to resume at {path} (name={space.name!r}, storage_path="
                         f"{space.storage_path!r}); run it without --resume first.")
    if not resume and restorable:
        raise InputError(f"a search named {space.name!r} already exists at {path}; continue it with --resume, or give "
                         "another name (--name).")
    for key, folder in (("storage_path", space.storage_path), ("data.cache_dir", space.base.data.cache_dir)):
        problem = None if is_uri(str(folder)) else folder_problem(folder)
        if problem:
            raise InputError(f"{space.source}: `{key}` must be a folder this machine can write, but {problem} "
                             f"({key}={str(folder)!r}).")
    if space.address is None and not ray.is_initialized():
        node = local_node()
        if node is not None:
            check_request(space.resources, [node])


def prepare_search(space: SearchSpace, *, out: Any = None) -> ClusterInfo:
    """Build the data caches and start or join Ray; raise InputError when the data cannot be read or no
    node can run a trial. A local Ray starts only once the data is ready, so unreadable data starts none."""
    import ray

    out = out or sys.stdout
    joining = space.address is not None or ray.is_initialized()
    if not joining:
        prepare_data(space, out=out)
    cluster = connect_ray(space.address)
    print(dashboard_message(cluster), file=out)
    check_request(space.resources, cluster.nodes)
    check_storage(space.storage_path, shared=space.storage_shared, nodes=cluster.nodes)
    if joining:  # a cluster's requests are checked first: they fail in seconds, a cache build takes minutes
        prepare_data(space, out=out)
    return cluster


def run_search(space: SearchSpace, *, callbacks: Sequence[Any] = (), points_to_evaluate: list[dict] | None = None,
               resume: bool = False, verbose: int = 1, out: Any = None,
               cluster: ClusterInfo | None = None, trainable: Callable[..., None] | None = None) -> SearchOutcome:
    """Run (or with ``resume`` continue) the search ``space`` describes; see the module docstring.

    ``points_to_evaluate``: configurations tried first, as ``{dotted.path: value}`` over the
    sampled parameters (Optuna enqueues them; parameters left out are sampled).
    ``out``: where progress lines go (default stdout).
    ``cluster``: given when the caller already ran :func:`check_search` and :func:`prepare_search`.
    ``trainable``: the function each trial runs, called as ``trainable(config, setup=TrialSetup)``;
    None is :func:`train_trial`, real training. A stand-in serves benchmarks of the search machinery
    (``benchmarks/bench_scale.py``: trials that sleep instead of training).
    """
    from ray import tune

    out = out or sys.stdout
    if cluster is None:
        check_search(space, resume=resume, points_to_evaluate=points_to_evaluate)
        cluster = prepare_search(space, out=out)
    path = space.experiment_path

    setup = TrialSetup(base=space.base.to_dict(), objective=space.objective, cpus=space.resources.cpu,
                       trial_root=None if is_uri(path) else path, fault_epoch=fault_epoch_from_env(),
                       fault_raise=fault_raise_from_env())
    runnable = tune.with_resources(tune.with_parameters(trainable or train_trial, setup=setup), space.resources.as_ray())
    study_storage = study_url(space)
    if resume:
        reopen_waiting(study_storage, space.name)
        tuner = tune.Tuner.restore(path, runnable, resume_unfinished=True, resume_errored=True)
        if callbacks:  # saved ones may be stale
            tuner._local_tuner.get_run_config().callbacks = result_loggers(callbacks)
        print(f"resuming the search at {path}", file=out)
    else:
        new_folder = not is_uri(path) and not Path(path).exists()
        try:
            remove_stale_study(study_storage)
            tuner = tune.Tuner(runnable, tune_config=_tune_config(space, study_storage, points_to_evaluate),
                               run_config=_run_config(space, callbacks, verbose))
        except BaseException:  # nothing ran: the folder this call made (the study file) goes
            if new_folder:
                shutil.rmtree(path, ignore_errors=True)
            raise
        print(f"search {space.name!r}: {space.num_samples} trials, results in {path}", file=out)
    try:
        with restored(NO_AUTO_LOGGERS, "1"):
            results = tuner.fit()
    except BaseException:  # e.g. a second Ctrl-C: the trials still running wait for --resume
        settle_study(study_storage, space.name, search_ended=False)
        raise
    board = rank_trials(results, space)
    spent = sum(row.epochs_run for row in board)
    budget_spent = space.budget_epochs is not None and spent >= space.budget_epochs
    complete = budget_spent or (len(results) >= space.num_samples
                                and results.num_terminated + results.num_errors == len(results))
    settle_study(study_storage, space.name, search_ended=complete,
                 errored={row.trial_id for row in board if row.status == schema.ERRORED})
    return SearchOutcome(results=results, leaderboard=board, experiment_path=path, study_storage=study_storage,
                         cluster=cluster, complete=complete, spent_epochs=spent, budget_spent=budget_spent)


def prepare_data(space: SearchSpace, *, out: Any = None) -> list[Path]:
    """Build the data caches trials will read, once, before any trial starts; returns their folders.

    The base experiment's data, plus one cache per combination of categorical or fixed values of
    parameters that change the cached voxels (``data.spacing`` choices, say). A parameter with a
    continuous range over such a path makes each trial build its cache on first use instead
    (safe: builds are locked).
    """
    from motorsearch.data.cache import prepare

    variants = _data_variants(space)
    roots = []
    for values in variants:
        cfg = space.trial_config(values, source=f"{space.source} (data preparation)")
        if out is not None:
            print(f"preparing data cache ({_describe(values) or 'base experiment'}) in {cfg.data.cache_dir}", file=out)
        roots.append(prepare(cfg.data, progress=out is not None).root)  # unreadable data leaves no new folder
    return roots


def rank_trials(results: Any, space: SearchSpace) -> list[LeaderboardRow]:
    """Every trial with its objective, in the ranking order of :func:`schema.rank_key` (the
    first finished trial with a value is the one ``export`` picks)."""
    objective = space.objective
    sampled = {p.path for p in space.parameters}
    rows = []
    for result, tune_status in zip(results, _tune_statuses(results), strict=True):
        last = result.metrics or {}
        frame = result.metrics_dataframe
        value = last.get(objective.value_key)
        value = float(value) if value is not None and value == value else None
        epoch = int(last[objective.epoch_key]) if value is not None else None
        if frame is not None and "epoch" in frame and len(frame):
            epochs_run = int(frame["epoch"].max())
        else:
            epochs_run = int(last.get("epoch", 0))
        checkpoint = _checkpoint_of_epoch(result, epoch) if epoch is not None else None
        if result.error:
            status = schema.ERRORED
        elif tune_status in _UNFINISHED:  # the search stopped (Ctrl-C) while the trial ran or waited
            status = schema.INTERRUPTED
        elif epochs_run >= space.planned_epochs(result.config or {}):
            status = schema.FINISHED
        else:
            status = schema.EARLY_STOPPED
        params = {k: v for k, v in (result.config or {}).items() if k in sampled}
        rows.append(LeaderboardRow(trial_id=_trial_id(result), value=value, epoch=epoch, epochs_run=epochs_run,
                                   status=status, params=params, checkpoint=checkpoint, path=str(result.path)))
    rows.sort(key=lambda r: schema.rank_key(r.status, r.value, r.epoch, space.mode))
    return rows


def format_leaderboard(rows: Sequence[LeaderboardRow], *, metric: str, top: int = 10) -> str:
    """The top ``top`` rows as an aligned text table, then where the best model file is."""
    shown = list(rows)[:top]
    params = sorted({k for row in shown for k in row.params})
    header = ["#", "trial", metric, "epoch", "status", *params]
    table = [header]
    for rank, row in enumerate(shown, 1):
        table.append([str(rank), row.trial_id, "-" if row.value is None else f"{row.value:.4f}",
                      "-" if row.epoch is None else str(row.epoch), row.status,
                      *[_format_value(row.params.get(p, "")) for p in params]])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in table]
    if len(rows) > top:
        lines.append(f"... and {len(rows) - top} more trials")
    best = _exportable(rows)
    if best is not None and best.checkpoint:
        lines.append(f"best checkpoint ({metric}={best.value:.4f}, trial {best.trial_id}, epoch {best.epoch}): "
                     f"{best.checkpoint}")
        lines.append(f"best model file: {best.checkpoint}/model.pt")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _tune_config(space: SearchSpace, study_storage: str, points_to_evaluate: list[dict] | None) -> Any:
    from ray import tune

    return tune.TuneConfig(
        search_alg=make_searcher(space, study_storage, points_to_evaluate),
        scheduler=_scheduler(space),
        num_samples=space.num_samples,
        max_concurrent_trials=space.max_concurrent,
        trial_dirname_creator=trial_dirname,
        reuse_actors=REUSE_ACTORS,
    )


def _run_config(space: SearchSpace, callbacks: Sequence[Any], verbose: int) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=space.name,
        storage_path=space.storage_path,
        callbacks=result_loggers(callbacks),
        stop=_budget(space),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=space.checkpoints_to_keep,
                                                checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        verbose=verbose,
    )


def result_loggers(callbacks: Sequence[Any]) -> list[Any]:
    """``callbacks`` plus Tune's CSV and JSON result loggers (``progress.csv``, ``result.json``)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [*callbacks, CSVLoggerCallback(), JsonLoggerCallback()]


def _budget(space: SearchSpace) -> Any:
    if space.budget_epochs is None:
        return None
    from motorsearch.search.budget import EpochBudget

    return EpochBudget(space.budget_epochs)


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (``trial_<id>``) instead of Tune's parameter-laden default."""
    return f"trial_{trial.trial_id}"


def _scheduler(space: SearchSpace) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    spec = space.scheduler
    if spec.type == "none":
        return None
    return ASHAScheduler(time_attr="epoch", metric=space.metric, mode=space.mode, max_t=space.max_epochs,
                         grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def _check_points(space: SearchSpace, points: list[dict] | None) -> None:
    known = {p.path for p in space.sampled}
    for index, point in enumerate(points or []):
        if not isinstance(point, dict):
            raise ConfigError(f"points_to_evaluate[{index}] must be a mapping of dotted.path: value, but got {point!r}.")
        for key, value in point.items():
            if key not in known:
                from motorsearch.registry import did_you_mean

                raise ConfigError(f"points_to_evaluate[{index}]: '{key}' is not a sampled parameter of "
                                  f"{space.source}.{did_you_mean(str(key), known)}")
            try:
                space.trial_config({key: value}, source="")
            except ConfigError as exc:
                raise ConfigError(f"points_to_evaluate[{index}]: {key}={value!r} is rejected: "
                                  f"{str(exc).removeprefix(': ')}") from None


def _data_variants(space: SearchSpace) -> list[dict[str, Any]]:
    options = []
    for parameter in space.parameters:
        if parameter.path not in _CACHE_KEYS:
            continue
        if parameter.type == "categorical":
            options.append([(parameter.path, c) for c in parameter.choices])
        elif parameter.type == "fixed":
            options.append([(parameter.path, parameter.value)])
        else:
            return [{}]  # a continuous range: trials build their own caches
    combos = [dict(c) for c in itertools.product(*options)]
    return combos if len(combos) <= _MAX_PREPARED_VARIANTS else [{}]


def _checkpoint_of_epoch(result: Any, epoch: int) -> str | None:
    """The path of the kept checkpoint reported at ``epoch``; None when Tune kept none (deleted by
    ``checkpoints_to_keep``, or a trial stopped by the budget or the driver as it reported)."""
    for checkpoint, metrics in result.best_checkpoints or []:
        if int(metrics.get("epoch", -1)) == epoch:
            return checkpoint.path
    return None


def _tune_statuses(results: Any) -> list[str | None]:
    """Tune's status of each trial of a ResultGrid, in its order (None where Tune does not say)."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None)
    if trials is None or len(trials) != len(results):
        return [None] * len(results)
    return [getattr(trial, "status", None) for trial in trials]


def _exportable(rows: Sequence[LeaderboardRow]) -> LeaderboardRow | None:
    return next((row for row in rows if row.status == schema.FINISHED and row.value is not None), None)


def _trial_id(result: Any) -> str:
    name = Path(str(result.path)).name
    return name.removeprefix("trial_")


def _describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
