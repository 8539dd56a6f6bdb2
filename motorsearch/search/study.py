"""The Optuna study of a search, kept as a faithful mirror of the Ray Tune trials.

:class:`StudySearch` is Ray's ``OptunaSearch`` told the search's :class:`~motorsearch.objective.Objective`:

- the value it learns is the objective (``best_val_f2`` by default), the same number MLflow, the
  leaderboard, ``best`` and ``export`` use; the study's metric name says so;
- every reported epoch is an intermediate value at step = ``epoch`` (the objective so far), the
  last epoch included;
- a trial that trained all its epochs is COMPLETE, one stopped earlier (ASHA, the epoch budget)
  is PRUNED (Optuna then takes its last intermediate value, the objective, as its value), one
  that errored is FAIL;
- each Optuna trial carries the user attributes ``ray_trial_id`` and, once its MLflow run exists,
  ``mlflow_run_id`` (set by :func:`link_run`).

After any ending no trial is left RUNNING (:func:`settle_study`): trials of an interrupted search
wait (WAITING) for ``--resume``, which takes them up again (:func:`reopen_waiting`) so the same
Optuna trial continues instead of a duplicate; trials that never trained in a search that ended
become FAIL.

The study is the SQLite file ``optuna.db`` beside the Tune results (``<storage_path>/<name>/``),
or ``.motorsearch/optuna/<name>.db`` under the current directory when ``storage_path`` is a URI
(SQLite needs a local file).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search.optuna import OptunaSearch

from motorsearch.objective import Objective
from motorsearch.search.space import is_uri

if TYPE_CHECKING:
    from motorsearch.search.space import SearchSpace

STUDY_FILE = "optuna.db"
RAY_TRIAL_ID = "ray_trial_id"
MLFLOW_RUN_ID = "mlflow_run_id"
ENDED_NOTE = "motorsearch_ended"  # why a trial that did not train to the end is WAITING or FAIL


class StudySearch(OptunaSearch):
    """``OptunaSearch`` whose study mirrors the search (see the module docstring).

    ``planned_epochs``: the epochs a trial with the given sampled values is set to train
    (``SearchSpace.planned_epochs``); a trial that ends with fewer is PRUNED.
    """

    def __init__(self, *, objective: Objective, planned_epochs: Callable[[dict], int], **kwargs: Any):
        self._objective = objective
        self._planned_epochs = planned_epochs
        self._planned: dict[str, int] = {}
        super().__init__(metric=objective.value_key, mode=objective.mode, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental in some Optuna releases
            self._ot_study.set_metric_names([self._objective.value_key])

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._planned[trial_id] = self._planned_epochs(config)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            self._report(trial_id, result)
        value = (result or {}).get(self._objective.value_key)
        state = optuna.trial.TrialState
        ot_trial = self._ot_trials[trial_id]
        if error or not _finite(value):
            if not error:
                ot_trial.set_user_attr(ENDED_NOTE, "stopped before its first validation epoch")
            self._ot_study.tell(ot_trial, state=state.FAIL)
        elif int(result.get("epoch", 0)) < self._planned.get(trial_id, self._planned_epochs({})):
            self._ot_study.tell(ot_trial, state=state.PRUNED)  # its value: the last intermediate one
        else:
            self._ot_study.tell(ot_trial, float(value), state=state.COMPLETE)
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self._objective.value_key), result.get("epoch")
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or epoch is None:
            return
        if not _finite(value):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step reported twice (a restarted trial) is ignored, with a warning
            self._ot_trials[trial_id].report(float(value), int(epoch))


def make_searcher(space: SearchSpace, study_storage: str, points_to_evaluate: list[dict] | None) -> StudySearch:
    """The searcher of ``space``: its sampler, its objective, its study in ``study_storage``."""
    import optuna

    spec = space.searcher
    if spec.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials,
                                             constant_liar=True)
    elif spec.sampler == "cmaes":
        sampler = optuna.samplers.CmaEsSampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials,
                                               warn_independent_sampling=False)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    _file(study_storage).parent.mkdir(parents=True, exist_ok=True)
    return StudySearch(objective=space.objective, planned_epochs=space.planned_epochs,
                       space=space.define_by_run(), sampler=sampler, study_name=space.name,
                       storage=_storage(study_storage), points_to_evaluate=points_to_evaluate or None)


def study_url(space: SearchSpace) -> str:
    """SQLAlchemy URL of the Optuna study file (see the module docstring). Creates nothing: the
    folder is made when the searcher first writes (:func:`make_searcher`)."""
    if is_uri(space.storage_path):
        file = Path.cwd() / ".motorsearch" / "optuna" / f"{space.name}.db"
    else:
        file = Path(space.experiment_path) / STUDY_FILE
    return f"sqlite:///{file}"


def remove_stale_study(url: str) -> None:
    """A study file without a Tune experiment beside it is left from a start that never ran: drop it."""
    file = _file(url)
    if file.is_file():
        file.unlink()


def settle_study(url: str, name: str, *, search_ended: bool, errored: Collection[str] = ()) -> None:
    """Leave no trial RUNNING after a search stops (see the module docstring).

    ``search_ended``: the search is complete (all samples, or its epoch budget), so a trial still
    RUNNING never trained to an end and becomes FAIL; otherwise (interrupted) it becomes WAITING
    for ``--resume``. ``errored``: Ray trial ids that errored; their trials become FAIL.
    """
    import optuna

    study = _load(url, name)
    if study is None:
        return
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        ray_id = trial.user_attrs.get(RAY_TRIAL_ID)
        if ray_id in errored:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        elif search_ended:
            storage.set_trial_user_attr(trial._trial_id, ENDED_NOTE, "the search ended before this trial trained")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        else:
            storage.set_trial_user_attr(trial._trial_id, ENDED_NOTE, "interrupted; continues with --resume")
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.WAITING)


def reopen_waiting(url: str, name: str) -> int:
    """Before ``--resume``: the trials :func:`settle_study` left WAITING run again; returns how many."""
    import optuna

    study = _load(url, name)
    if study is None:
        return 0
    reopened = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        if RAY_TRIAL_ID in trial.user_attrs:  # not a warm-start point Optuna enqueued
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.RUNNING)
            reopened += 1
    return reopened


def link_run(url: str, name: str, ray_trial_id: str, mlflow_run_id: str) -> int | None:
    """Record ``mlflow_run_id`` on the unfinished Optuna trial of ``ray_trial_id``: that trial's number,
    None when there is none."""
    import optuna

    study = _load(url, name)
    if study is None:
        return None
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get(RAY_TRIAL_ID) == ray_trial_id:
            study._storage.set_trial_user_attr(trial._trial_id, MLFLOW_RUN_ID, mlflow_run_id)
            return trial.number
    return None


def _load(url: str, name: str) -> Any:
    import optuna

    if url.startswith("sqlite:///") and not _file(url).is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=_storage(url))
    except KeyError:  # no study of that name (the search never asked for a trial)
        return None


def _file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _storage(url: str) -> Any:
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
