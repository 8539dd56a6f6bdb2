"""MLflow runs of a search: a parent run per search, a nested child run per Ray Tune trial.

Everything is logged from the Ray driver through ``MlflowClient`` — trials never talk to
MLflow, so a worker node needs neither a tracking URI nor write access anywhere but the Ray
storage path. Checkpoint folders are read from the storage path (shared on a cluster; remote
filesystems are downloaded to a driver temporary folder) and uploaded through the tracking
server, so no artifact lands on a worker's local disk.

Use::

    with SearchRun.start(name=space.name, objective=space.objective, space_file=path, settings={...},
                         tracking_uri=uri, ray_address=address, storage_path=storage) as search:
        callback = search.trial_callback(resolve_config=lambda values: ...)  # -> full config dict
        Tuner(..., run_config=RunConfig(callbacks=[callback])).fit()

A trial's summary (``best_val_f2`` and ``best_epoch`` for ``objective: best``, see
:mod:`motorsearch.objective`) is the objective the trial itself reported last: it covers every
epoch the trial trained, those before a restart or a resumed search included. The uploaded
``checkpoints/best/model.pt`` is the checkpoint of that epoch.

Made to be read in the MLflow UI without opening a menu: the experiment is tagged as a model-training
experiment (the UI opens its runs, not traces); the parent run is named after the search and carries
the search's settings as parameters, its summary as metrics (:func:`leaderboard.log_search_summary`)
and the leaderboard as its description; a child run is named ``<search> #<Optuna trial number>``
and its sampled values (:func:`trial_run_name`; the Ray trial id is tag ``motorsearch.trial_id``);
bookkeeping numbers (Unix times, timings) go under ``system/`` (:data:`schema.BOOKKEEPING`); the
runs table opened by :attr:`SearchRun.runs_url` shows the objective, its epoch, the status and the
sampled parameters as columns (:func:`set_runs_view`).

A trial's final status (tag ``motorsearch.status``):

- ``finished``: completed, and its last reported ``epoch`` reached the epochs it was set to
  train (``max_epochs``, else the resolved config's ``optim.epochs``);
- ``early_stopped``: completed with fewer epochs (the scheduler, e.g. ASHA, stopped it);
- ``errored``: Ray gave up on it (after ``max_failures`` restarts);
- ``interrupted``: the search ended (Ctrl-C, crash) while the trial was still running.

A search whose driver died (SIGKILL) cannot end its runs itself; the next command that opens the
experiment marks them interrupted (:mod:`motorsearch.tracking.drivers`). A search refused after its
parent run was opened leaves nothing: the new parent (and the experiment, when the command made it)
is deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from motorsearch import __version__
from motorsearch.errors import InputError
from motorsearch.evaluation.pictures import VALIDATION_PICTURE
from motorsearch.objective import Objective, is_better
from motorsearch.tracking import schema
from motorsearch.tracking.drivers import settle_dead_searches, this_driver
from motorsearch.tracking.uri import check_tracking_uri, describe_origin, resolve_tracking_uri, sqlite_path
from motorsearch.training.checkpoint import MODEL_FILE

logger = logging.getLogger(__name__)

# Keys Ray adds to every result; they are bookkeeping, not metrics of the model.
_RAY_KEYS = frozenset({
    "timestamp", "pid", "done", "training_iteration", "iterations_since_restore", "time_since_restore",
    "trial_id", "date", "hostname", "node_ip", "config", "checkpoint_dir_name", "should_checkpoint",
    "epoch", "__duplicate__",
})
_MLFLOW_RUN_STATUS = {schema.FINISHED: "FINISHED", schema.EARLY_STOPPED: "FINISHED",
                      schema.ERRORED: "FAILED", schema.INTERRUPTED: "KILLED"}
MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a database file by default


@dataclass
class SearchRun:
    """The parent run of one search. Create with :meth:`start`; end with :meth:`finish` (or ``with``)."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    run_id: str
    objective: Objective
    callbacks: list[TrialTracker] = field(default_factory=list, repr=False)
    # read by ``finish`` when called without arguments (e.g. by ``with``): set them once known
    study_storage: str | None = None
    study_name: str | None = None
    status: str | None = None  # e.g. "interrupted" when the runner caught Ctrl-C itself
    # what ``start`` made, deleted again when the search is refused before any trial ran
    created_run: bool = False
    created_experiment: bool = False

    @staticmethod
    def check_tracking(tracking_uri: str | None, *, origin: str | None = None) -> str:
        """Resolve ``tracking_uri`` (:func:`~motorsearch.tracking.uri.resolve_tracking_uri`) and check it
        without writing anything: an unreachable server raises InputError within seconds. ``origin``
        (e.g. "--tracking-uri") is named in the message when the URI was given."""
        uri = resolve_tracking_uri(tracking_uri)
        check_tracking_uri(uri, origin=describe_origin(tracking_uri, explicit_origin=origin or "`tracking_uri`"))
        return uri

    @classmethod
    def start(cls, *, name: str, objective: Objective, space_file: str | Path | None = None,
              settings: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
              ray_address: str | None = None, storage_path: str | None = None, resume: bool = False,
              tracking_origin: str | None = None) -> SearchRun:
        """Open (or with ``resume``, reopen the latest) parent run in experiment ``name``.

        ``settings``: how the search runs (sampler, scheduler, budget, ...), logged as the new parent
        run's parameters.

        ``tracking_uri`` is resolved and checked by :meth:`check_tracking` (``tracking_origin``: where
        it was given, for the message). Runs of a dead driver in the experiment are marked
        interrupted first (:func:`settle_dead_searches`).
        """
        uri = cls.check_tracking(tracking_uri, origin=tracking_origin)
        database = sqlite_path(uri)
        if database is not None:  # checked, not made, by check_tracking
            try:
                database.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the folder {database.parent} for the MLflow database {database}: "
                                 f"{exc.strerror or exc}.") from None
        client = MlflowClient(uri)
        existed = client.get_experiment_by_name(name) is not None
        experiment_id = _experiment_id(client, name, artifact_location=default_artifact_location(uri))
        settle_dead_searches(client, experiment_id)
        parent = _latest_search(client, experiment_id) if resume else None
        if parent is not None:
            client.update_run(parent.info.run_id, status="RUNNING")
            for key, value in {schema.STATUS: schema.SEARCH_RUNNING, schema.DRIVER: this_driver()}.items():
                client.set_tag(parent.info.run_id, key, value)
            run_id = parent.info.run_id
        else:
            tags = {schema.ROLE: schema.ROLE_SEARCH, schema.STATUS: schema.SEARCH_RUNNING, schema.DRIVER: this_driver(),
                    schema.METRIC: objective.metric, schema.MODE: objective.mode, schema.OBJECTIVE: objective.kind,
                    schema.CODE_VERSION: __version__,
                    schema.RAY_ADDRESS: ray_address or "local", schema.STORAGE_PATH: str(storage_path or "")}
            commit = git_commit()
            if commit:
                tags[schema.GIT_COMMIT] = commit
            if space_file is not None:
                tags[schema.SPACE_FILE] = str(Path(space_file).resolve())
                tags[schema.SPACE_SHA256] = hashlib.sha256(Path(space_file).read_bytes()).hexdigest()
            run = client.create_run(experiment_id, tags=tags,
                                    run_name=f"{name} search {time.strftime('%Y-%m-%d %H:%M')}")
            run_id = run.info.run_id
            if settings:
                client.log_batch(run_id, params=[Param(str(k), _param_text(v)) for k, v in settings.items()])
            if space_file is not None:
                client.log_artifact(run_id, str(space_file), schema.SPACE_ARTIFACT_DIR)
        set_runs_view(client, experiment_id, objective)
        return cls(tracking_uri=uri, experiment_id=experiment_id, experiment_name=name, run_id=run_id,
                   objective=objective, created_run=parent is None, created_experiment=not existed)

    @property
    def runs_url(self) -> str:
        """The experiment's runs table in the MLflow UI (model-training view, the search nested with its
        trials, the objective's columns shown): on the tracking server, or where :attr:`ui_command` serves."""
        base = self.tracking_uri.rstrip("/") if _is_server(self.tracking_uri) else MLFLOW_UI
        return f"{base}/#/experiments/{self.experiment_id}/runs?viewStateShareKey={schema.RUNS_VIEW}"

    @property
    def ui_command(self) -> str | None:
        """The command that serves this search's tracking database at :data:`MLFLOW_UI`, typed as it works
        from the current directory; None for a tracking server (it is the UI)."""
        if _is_server(self.tracking_uri):
            return None
        from motorsearch.search.cluster import env_command

        uri = self.tracking_uri
        prefix = "sqlite:///"
        if uri.lower().startswith(prefix) and not uri.endswith(":memory:"):
            uri = prefix + str(Path(uri[len(prefix):]).expanduser().resolve())
        return f"{env_command('mlflow')} ui --backend-store-uri {uri} --port {urlsplit(MLFLOW_UI).port}"

    def trial_callback(self, *, max_epochs: int | None = None,
                       resolve_config: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
                       background: bool = True) -> TrialTracker:
        """The Ray Tune callback that makes this search's child runs; pass it in ``RunConfig(callbacks=[...])``.

        Each new child run's id goes to its Optuna trial (user attribute ``mlflow_run_id``) when
        ``study_storage``/``study_name`` are set.
        """
        study = (self.study_storage, self.study_name) if self.study_storage and self.study_name else None
        callback = TrialTracker(
            tracking_uri=self.tracking_uri, experiment_id=self.experiment_id, parent_run_id=self.run_id,
            objective=self.objective, max_epochs=max_epochs, resolve_config=resolve_config,
            background=background,
            study=study)
        self.callbacks.append(callback)
        return callback

    def finish(self, status: str | None = None, *, study_storage: str | None = None,
               study_name: str | None = None) -> None:
        """Wait for pending uploads, log the leaderboard CSV and importance plot, close the parent run.

        ``status``: "finished", "failed" or "interrupted" (default: ``self.status``, else
        "finished"). ``study_storage``/``study_name`` (default: the attributes): the Optuna study
        (an RDB URL such as ``sqlite:///<run dir>/optuna.db``) for the importance plot; when it
        cannot be read the study is rebuilt from the child runs (``leaderboard.importance_study``).
        """
        from motorsearch.tracking import leaderboard

        status = status or self.status or schema.SEARCH_FINISHED
        study_storage, study_name = study_storage or self.study_storage, study_name or self.study_name

        for callback in self.callbacks:
            callback.close()
        client = MlflowClient(self.tracking_uri)
        try:
            table = leaderboard.log_search_summary(client, self.run_id, objective=self.objective,
                                                   study_storage=study_storage, study_name=study_name)
            set_runs_view(client, self.experiment_id, self.objective,
                          params=leaderboard.param_columns(table))
        except Exception as exc:  # the search itself is done; a summary failure must not hide that
            logger.warning("could not log the leaderboard of search run %s: %s", self.run_id, exc)
            client.set_tag(self.run_id, schema.ARTIFACT_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow_status = {schema.SEARCH_FINISHED: "FINISHED", schema.SEARCH_FAILED: "FAILED"}.get(status, "KILLED")
        client.set_tag(self.run_id, schema.STATUS, status)
        client.set_terminated(self.run_id, status=mlflow_status)

    def __enter__(self) -> SearchRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> bool:
        if kind is None:
            status = self.status or schema.SEARCH_FINISHED
        elif issubclass(kind, KeyboardInterrupt) or not self.created_run:
            status = schema.SEARCH_INTERRUPTED  # a resumed search that failed again can still be resumed
        elif not self._has_trials():
            self.discard()  # refused or broken before any trial: it leaves no run to hide the real searches
            return False
        else:
            status = schema.SEARCH_FAILED
        self.finish(status)
        return False

    def _has_trials(self) -> bool:
        return bool(MlflowClient(self.tracking_uri).search_runs(
            [self.experiment_id], max_results=1, filter_string=f"tags.`{schema.PARENT}` = '{self.run_id}'"))

    def discard(self) -> None:
        """Delete the parent run this search made, and its experiment when the search made that too."""
        for callback in self.callbacks:
            callback.close()
        client = MlflowClient(self.tracking_uri)
        client.delete_run(self.run_id)
        if self.created_experiment:
            client.delete_experiment(self.experiment_id)


@dataclass(frozen=True)
class TrialLabels:
    """How a run that is not a search trial (a confirmation on another fold) shows in MLflow: its
    parameters, the tags that set it apart (role, phase, fold) and its run name."""

    params: Mapping[str, Any]
    tags: Mapping[str, str]
    name: str


@dataclass
class _Trial:
    """What the driver knows about one trial's child run."""

    run_id: str
    target_epochs: int | None
    last_epoch: int = 0
    last_value: float = math.nan
    objective: tuple[float, int] | None = None  # (value, epoch) as the trial last reported it
    checkpoints: list[tuple[int, float, Any]] = field(default_factory=list)  # (epoch, metric, ray Checkpoint)
    restarts: int = 0
    ended: bool = False


class TrialTracker(Callback):
    """Ray Tune callback (runs on the driver): one nested MLflow child run per trial.

    - start: params = the sampled values (``trial.evaluated_params``), tag ``motorsearch.params_json``
      with their types, ``config.yaml`` = ``resolve_config(trial.config)``;
    - each result: every numeric metric with step = the result's ``epoch``;
    - each checkpoint: remembered with its epoch and metric value (nothing uploaded yet);
    - end: the objective the trial last reported (``best_<metric>``/``best_epoch`` by default) and
      ``last_epoch``; the model file (+ ``.sha256``) of the objective's epoch as the best model,
      and of the last checkpoint; ``pictures/training_curves.png``; ``pictures/validation.png``; the
      status tag. This part runs on a background thread (``background=True``) so the Tune loop
      is not held up by uploads and inference; :meth:`close` waits for it.
    """

    def __init__(self, *, tracking_uri: str, experiment_id: str, parent_run_id: str, objective: Objective,
                 max_epochs: int | None = None,
                 resolve_config: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
                 background: bool = True, study: tuple[str, str] | None = None,
                 labels: Callable[[dict[str, Any]], TrialLabels] | None = None):
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, but got max_epochs={max_epochs}.")
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.objective, self.max_epochs, self.study = objective, max_epochs, study
        self.metric, self.mode = objective.metric, objective.mode
        self.resolve_config = resolve_config
        self.background, self.labels = background, labels
        self._trials: dict[str, _Trial] = {}
        self._client: MlflowClient | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._search_name: str | None = None

    # Tune pickles its run config (with this callback) into the experiment folder for restores.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_trials={}, _client=None, _executor=None, _pending=[])
        return state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ Tune hooks

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._open(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", record.last_epoch + 1)))
        now = int(time.time() * 1000)
        metrics = [Metric(f"{schema.SYS_PREFIX}{key}" if key in schema.BOOKKEEPING else key, float(value), now, epoch)
                   for key, value in sorted(result.items()) if key not in _RAY_KEYS and _is_number(value)]
        if metrics:
            self.client.log_batch(record.run_id, metrics=metrics)
        record.last_epoch = epoch
        value = result.get(self.metric)
        record.last_value = float(value) if _is_number(value) else math.nan
        objective, objective_epoch = result.get(self.objective.value_key), result.get(self.objective.epoch_key)
        if _is_number(objective) and _is_number(objective_epoch):
            record.objective = (float(objective), int(objective_epoch))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        record = self._open(trial)
        record.checkpoints.append((record.last_epoch, record.last_value, checkpoint))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._open(trial)
        record.restarts += 1
        self.client.set_tag(record.run_id, schema.RESTARTS, str(record.restarts))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._open(trial)
        done = record.target_epochs is None or record.last_epoch >= record.target_epochs
        self._end(trial, schema.FINISHED if done else schema.EARLY_STOPPED)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, schema.ERRORED, error=_error_text(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:
            record = self._trials.get(trial.trial_id)
            if record is not None and not record.ended:
                self._end(trial, schema.INTERRUPTED)
        self.close()

    def close(self) -> None:
        """Wait until every trial's end-of-trial logging is done (idempotent)."""
        for future in list(self._pending):
            try:
                future.result()
            except Exception as exc:  # e.g. the tracking server went away; the search result stands
                logger.warning("MLflow: end-of-trial logging failed: %s", exc)
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ------------------------------------------------------------------ runs

    def _open(self, trial: Any) -> _Trial:
        record = self._trials.get(trial.trial_id)
        if record is not None:
            return record
        labels = self.labels(dict(trial.config)) if self.labels is not None else None
        params = dict(labels.params) if labels else dict(trial.evaluated_params or _flatten(trial.config))
        resolved = self._resolved_config(trial)
        target = self.max_epochs
        if target is None and isinstance(resolved.get("optim"), Mapping):
            target = resolved["optim"].get("epochs")
        existing = self._existing_child(trial.trial_id)
        if existing is not None:  # a resumed search: keep logging into the trial's run
            run_id = existing.info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, schema.STATUS, schema.TRIAL_RUNNING)
        else:
            tags = {schema.PARENT: self.parent_run_id, schema.ROLE: schema.ROLE_TRIAL, schema.TRIAL_ID: trial.trial_id,
                    schema.STATUS: schema.TRIAL_RUNNING, schema.METRIC: self.metric, schema.MODE: self.mode,
                    schema.PARAMS_JSON: json.dumps(params, sort_keys=True, default=str)}
            tags.update(labels.tags if labels else {})
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            self.client.log_batch(run_id, params=[Param(str(k), _param_text(v)) for k, v in sorted(params.items())])
            self.client.log_text(run_id, yaml.safe_dump(_plain(resolved), sort_keys=False), schema.CONFIG_ARTIFACT)
            if labels is not None:
                self.client.update_run(run_id, name=labels.name)
            else:
                self._name_trial_run(run_id, trial.trial_id, params)
        record = self._trials[trial.trial_id] = _Trial(run_id=run_id, target_epochs=target)
        return record

    def _name_trial_run(self, run_id: str, trial_id: str, params: Mapping[str, Any]) -> None:
        """Name a search trial's run by its Optuna trial number (linking the two) and its values."""
        number = None
        if self.study is not None:
            from motorsearch.search.study import link_run

            number = link_run(*self.study, trial_id, run_id)
        if number is not None:
            self.client.set_tag(run_id, schema.OPTUNA_TRIAL, str(number))
        else:  # no study to ask: Tune's counter, the digits that end its trial id ("3ab1f_00002")
            digits = trial_id.rpartition("_")[2]
            number = int(digits) if digits.isdigit() else None
        self.client.update_run(run_id, name=trial_run_name(self._experiment_name(), number, params))

    def _experiment_name(self) -> str:
        if self._search_name is None:
            self._search_name = self.client.get_experiment(self.experiment_id).name
        return self._search_name

    def _resolved_config(self, trial: Any) -> dict[str, Any]:
        if self.resolve_config is None:
            return dict(trial.config)
        try:
            return dict(self.resolve_config(dict(trial.config)))
        except Exception as exc:  # the trial itself will report the bad config; tracking goes on
            logger.warning("could not resolve the config of trial %s (%s); logging its raw config", trial, exc)
            return dict(trial.config)

    def _existing_child(self, trial_id: str) -> Any:
        found = self.client.search_runs(
            [self.experiment_id], max_results=1,
            filter_string=f"tags.`{schema.PARENT}` = '{self.parent_run_id}' and tags.`{schema.TRIAL_ID}` = '{trial_id}'")
        return found[0] if found else None

    def _end(self, trial: Any, status: str, *, error: str | None = None) -> None:
        record = self._open(trial)
        if record.ended:
            return
        record.ended = True
        checkpoints = _kept_checkpoints(trial, self.metric) or list(record.checkpoints)
        job = (record, status, checkpoints, error)
        if not self.background:
            self._finalize(*job)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-trial-end")
        self._pending.append(self._executor.submit(self._finalize, *job))

    def _finalize(self, record: _Trial, status: str, checkpoints: list, error: str | None) -> None:
        """End-of-trial logging; a failure here is logged on the run, never raised into Tune."""
        client = MlflowClient(self.tracking_uri)  # one client per thread
        run_id = record.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="motorsearch-trial-") as tmp:
                self._log_trial_end(client, run_id, record, checkpoints, Path(tmp))
        except Exception as exc:
            logger.warning("MLflow: end-of-trial logging for run %s failed: %s", run_id, exc)
            client.set_tag(run_id, schema.ARTIFACT_ERROR, f"{type(exc).__name__}: {exc}"[:5000])
        if error:
            client.set_tag(run_id, "motorsearch.error", error[-5000:])
        client.set_tag(run_id, schema.STATUS, status)
        client.set_terminated(run_id, status=_MLFLOW_RUN_STATUS[status])

    def _log_trial_end(self, client: MlflowClient, run_id: str, record: _Trial, checkpoints: list,
                       tmp: Path) -> None:
        from motorsearch.tracking.pictures import training_curves_png

        # The objective's epoch first; should its checkpoint be gone, the next best that still exists.
        objective_epoch = record.objective[1] if record.objective else None
        ordered = _ranked(checkpoints, self.mode)
        if self.objective.kind == "last" or objective_epoch is None:
            ordered = sorted(checkpoints, key=lambda item: -item[0])
        ordered.sort(key=lambda item: item[0] != objective_epoch)  # stable: the rest keep their order
        best, best_file = _stage_first(ordered, tmp / "best")
        last, _ = _stage_first(sorted(checkpoints, key=lambda item: -item[0]), tmp / "last")
        now = int(time.time() * 1000)
        summary = [Metric(schema.LAST_EPOCH, float(record.last_epoch), now, record.last_epoch)]
        if record.objective is not None:
            value, epoch = record.objective
            summary += [Metric(self.objective.value_key, value, now, record.last_epoch),
                        Metric(self.objective.epoch_key, float(epoch), now, record.last_epoch)]
        client.log_batch(run_id, metrics=summary)
        if best is not None and best[0] != objective_epoch:
            client.set_tag(run_id, schema.ARTIFACT_ERROR, f"the checkpoint of epoch {objective_epoch} is gone; "
                                                          f"{schema.BEST_MODEL} is epoch {best[0]}'s")
        if best_file is None and last is not None:  # no epoch with a value of the metric
            best_file = tmp / "last" / MODEL_FILE
        if best_file is not None:
            client.log_artifacts(run_id, str(best_file.parent), str(Path(schema.BEST_MODEL).parent))
            client.set_tag(run_id, schema.BEST_MODEL_SHA256, _sha256(best_file))
        if last is not None:
            client.log_artifacts(run_id, str(tmp / "last"), str(Path(schema.LAST_MODEL).parent))

        history = _history(client, run_id)
        if history:
            curves = training_curves_png(history, tmp / "training_curves.png", best_epoch=objective_epoch)
            client.log_artifact(run_id, str(curves), str(Path(schema.CURVES_PNG).parent))
        picture = _stage_picture(best[2], tmp / VALIDATION_PICTURE) if best is not None else None
        if picture is not None:  # drawn by the trial when the epoch was its best so far
            client.log_artifact(run_id, str(picture), str(Path(schema.VALIDATION_PNG).parent))


# ---------------------------------------------------------------------- helpers


def git_commit(folder: str | Path | None = None) -> str | None:
    """``<sha>`` (``<sha>-dirty`` with uncommitted changes) of the motorsearch checkout, None outside git."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha or None


def default_artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: ``<db folder>/mlartifacts/<name>`` beside a local
    SQLite database (instead of MLflow's ``./mlruns`` in whatever folder the search started);
    None (the server decides: ``--artifacts-destination``) for a tracking server."""
    prefix = "sqlite:///"
    if not tracking_uri.lower().startswith(prefix) or tracking_uri.endswith(":memory:"):
        return None
    return (Path(tracking_uri[len(prefix):]).expanduser().resolve().parent / "mlartifacts").as_uri()


def set_runs_view(client: MlflowClient, experiment_id: str, objective: Objective, *,
                  params: Sequence[str] = ()) -> None:
    """Save the runs-table view of :data:`schema.RUNS_VIEW` on the experiment: the objective, its epoch,
    the trial status and the sampled parameters ``params`` as columns."""
    columns = [f"metrics.`{objective.value_key}`", f"metrics.`{objective.epoch_key}`", f"tags.`{schema.STATUS}`",
               *(f"params.`{name}`" for name in params)]
    client.set_experiment_tag(experiment_id, schema.SHARED_VIEW_PREFIX + schema.RUNS_VIEW,
                              json.dumps({"selectedColumns": columns}))


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.lower().startswith(("http://", "https://"))


def trial_run_name(search_name: str, number: int | None, params: Mapping[str, Any], *, limit: int = 120) -> str:
    """A trial's run name: ``"demo #3 loss.name=focal optim.lr=0.00231"`` (the search, the trial's
    number, its sampled values to 3 significant digits), cut to ``limit`` characters."""
    head = search_name if number is None else f"{search_name} #{number}"
    values = [f"{key}={f'{value:.3g}' if isinstance(value, float) else value}" for key, value in sorted(params.items())]
    name = " ".join([head, *values])
    return name if len(name) <= limit else name[:limit - 1] + "…"


def _experiment_id(client: MlflowClient, name: str, *, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{artifact_location}/{name}" if artifact_location else None
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    client.set_experiment_tag(experiment_id, schema.EXPERIMENT_KIND, schema.MODEL_TRAINING)
    return experiment_id


def _latest_search(client: MlflowClient, experiment_id: str) -> Any:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _ranked(checkpoints: list, mode: str) -> list[tuple[int, float, Any]]:
    """Checkpoints with a finite metric, best first, ties as :func:`motorsearch.objective.is_better` breaks them."""
    ranked: list[tuple[int, float, Any]] = []
    for item in sorted(checkpoints, key=lambda item: item[0]):  # epoch order, so a tie goes to the later one
        if not math.isfinite(item[1]):
            continue
        place = next((i for i, other in enumerate(ranked) if is_better(item[1], other[1], mode)), len(ranked))
        ranked.insert(place, item)
    return ranked


def _kept_checkpoints(trial: Any, metric: str) -> list[tuple[int, float, Any]]:
    """(epoch, metric value, checkpoint) of every checkpoint Tune still keeps for ``trial``: its own
    bookkeeping, which a resumed search restores, unlike what this driver saw."""
    try:
        manager = trial.run_metadata.checkpoint_manager
        results = list(manager.best_checkpoint_results)
        if manager.latest_checkpoint_result is not None and manager.latest_checkpoint_result not in results:
            results.append(manager.latest_checkpoint_result)
    except AttributeError:  # not a Tune trial (tests) or another Ray version: use what the driver saw
        return []
    kept = []
    for result in results:
        metrics = result.metrics or {}
        if "epoch" in metrics:
            value = metrics.get(metric)
            kept.append((int(metrics["epoch"]), float(value) if _is_number(value) else math.nan, result.checkpoint))
    return kept


def _stage_first(candidates: list, folder: Path) -> tuple[tuple[int, float, Any] | None, Path | None]:
    """Stage the model file of the first candidate whose checkpoint still exists: (candidate, file)."""
    for candidate in candidates:
        try:
            return candidate, _stage_model_file(candidate[2], folder)
        except FileNotFoundError as exc:
            logger.warning("MLflow: skipping a checkpoint that is gone: %s", exc)
    return None, None


def _stage_picture(checkpoint: Any, target: Path) -> Path | None:
    """Copy the checkpoint's validation picture to ``target``; None when it has none (not a best epoch,
    or a checkpoint that is gone)."""
    try:
        with checkpoint.as_directory() as directory:
            source = Path(directory) / VALIDATION_PICTURE
            if not source.is_file():
                return None
            shutil.copyfile(source, target)
    except OSError:
        return None
    return target


def _stage_model_file(checkpoint: Any, folder: Path) -> Path:
    """Copy the checkpoint's model file to ``folder/model.pt`` and write its ``.sha256``."""
    from motorsearch.model_file import write_checksum

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_FILE
    try:
        with checkpoint.as_directory() as directory:  # a local path, or a download from remote storage
            source = Path(directory) / MODEL_FILE
            if not source.is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint.path} has no {MODEL_FILE}")
            shutil.copyfile(source, target)
    except OSError as exc:  # a deleted checkpoint folder (local or remote storage)
        raise FileNotFoundError(f"checkpoint {checkpoint.path}: {exc}") from None
    write_checksum(target)
    return target


def _history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """Per-epoch metrics of a run as ``[{"epoch": e, name: value, ...}, ...]`` (read back from MLflow)."""
    run = client.get_run(run_id)
    by_epoch: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        if key.startswith(("best_", "last_", schema.SYS_PREFIX)):  # summaries and bookkeeping, not curves
            continue
        for point in client.get_metric_history(run_id, key):
            by_epoch.setdefault(point.step, {"epoch": point.step})[key] = point.value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _sha256(path: Path) -> str:
    from motorsearch.model_file import file_sha256

    return file_sha256(path)


def _error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text() if path and Path(path).is_file() else None
    except OSError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    return (value if isinstance(value, str) else json.dumps(value, default=str))[:6000]


def _plain(value: Any) -> Any:
    """YAML-safe copy: mappings and sequences kept, numpy scalars to Python, other objects to str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)
