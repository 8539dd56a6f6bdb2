"""What a search looks like in MLflow: tag names, artifact paths, statuses, the ordering rule.

One MLflow experiment per search name. In it, one parent run per ``run`` invocation (tag
``motorsearch.role = search``) and one nested child run per Ray trial (``motorsearch.role =
trial``, ``mlflow.parentRunId`` = the parent). Everything that reads runs back (leaderboard,
``best``, ``export``, warm start) goes through these names.
"""

from __future__ import annotations

from motorsearch.objective import sort_sign

ROLE = "motorsearch.role"
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
ROLE_CONFIRMATION = "confirmation"  # a top trial's configuration trained again on another fold (``confirm``)
ROLE_REFIT = "refit"  # the chosen configuration trained on all labelled tomograms (``refit``)
PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag; the UI draws the tree from it
NOTE = "mlflow.note.content"  # MLflow's run description (markdown), shown on the run's page
# Experiment tag: MLflow 3's UI opens an experiment without it in the GenAI (traces) view.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
# Experiment tag ``mlflow.sharedViewState.<key>``: a runs-table view (JSON: the columns shown) that the
# UI opens for the URL ``#/experiments/<id>/runs?viewStateShareKey=<key>``.
SHARED_VIEW_PREFIX, RUNS_VIEW = "mlflow.sharedViewState.", "motorsearch"

STATUS = "motorsearch.status"
METRIC = "motorsearch.metric"
MODE = "motorsearch.mode"

# parent run
SPACE_FILE = "motorsearch.space_file"
SPACE_SHA256 = "motorsearch.space_sha256"
CODE_VERSION = "motorsearch.version"
GIT_COMMIT = "motorsearch.git_commit"
RAY_ADDRESS = "motorsearch.ray_address"
DRIVER = "motorsearch.driver"  # host:pid:start of the process running the search (``search_runs.this_driver``)
STORAGE_PATH = "motorsearch.storage_path"
BEST_RUN = "motorsearch.best_run_id"

# child run
TRIAL_ID = "motorsearch.trial_id"
OPTUNA_TRIAL = "motorsearch.optuna_trial"  # the number of the trial in the search's Optuna study
PARAMS_JSON = "motorsearch.params_json"  # the sampled values with their types, for warm starts
BEST_MODEL_SHA256 = "motorsearch.best_model_sha256"
RESTARTS = "motorsearch.restarts"
# confirmation runs (children of the search's parent run, role "confirmation")
FOLD = "motorsearch.fold"  # the validation fold the run was scored on
CANDIDATE = "motorsearch.candidate_run_id"  # the search trial whose configuration it trained
# parent and the confirmed trials: which confirmation the confirmed_* metrics come from
CONFIRMATION = "motorsearch.confirmation"
ARTIFACT_ERROR = "motorsearch.artifact_error"

# search statuses (parent)
SEARCH_RUNNING, SEARCH_FINISHED, SEARCH_FAILED, SEARCH_INTERRUPTED = "running", "finished", "failed", "interrupted"
# trial statuses (child)
TRIAL_RUNNING, FINISHED, EARLY_STOPPED, ERRORED, INTERRUPTED = (
    "running", "finished", "early_stopped", "errored", "interrupted")

# child artifacts
CONFIG_ARTIFACT = "config.yaml"
BEST_MODEL = "checkpoints/best/model.pt"
LAST_MODEL = "checkpoints/last/model.pt"
REFIT_MODEL = "model/model.pt"  # a refit run's model file
CURVES_PNG = "pictures/training_curves.png"
VALIDATION_PNG = "pictures/validation.png"
# parent artifacts
SPACE_ARTIFACT_DIR = "space"
LEADERBOARD_CSV = "leaderboard.csv"
CONFIRMATION_CSV = "confirmation.csv"
IMPORTANCE_PNG = "pictures/param_importance.png"

# child summary metrics (logged once, when the trial ends): the objective (``Objective.value_key``,
# e.g. ``best_val_f2``, and ``Objective.epoch_key``) and the trial's last epoch
LAST_EPOCH = "last_epoch"
OBJECTIVE = "motorsearch.objective"  # parent tag: best | last (absent on searches before it existed: best)
# Reported numbers that describe the run, not the model (Unix times, timings, the resume epoch): logged
# as ``system/<name>``, MLflow's own prefix, which its UI charts under "System metrics", apart from the model's.
SYS_PREFIX = "system/"
BOOKKEEPING = frozenset({"reported_at", "trial_started_at", "resumed_from_epoch", "time_total_s",
                         "time_this_iter_s", "epoch_time_s"})

# parent summary metrics, logged when the search ends: the best finished trial's objective under the
# objective's own name (``best_val_f2``), and how many trials ended in each status
TRIAL_COUNTS = {FINISHED: "trials_finished", EARLY_STOPPED: "trials_early_stopped", ERRORED: "trials_errored",
                INTERRUPTED: "trials_interrupted"}

# Trials that trained all their epochs rank first: only they can be exported, and only they are
# COMPLETE in the Optuna study. A trial whose Optuna trial is WAITING shows as interrupted.
STATUS_RANK = {FINISHED: 0, EARLY_STOPPED: 1, INTERRUPTED: 2, TRIAL_RUNNING: 2, ERRORED: 3}


def rank_key(status: str, value: float | None, epoch: int | None, mode: str) -> tuple:
    """The ranking rule of trials, as a sort key.

    Status first (:data:`STATUS_RANK`), then the objective (higher first for mode "max"; trials
    without a value last), ties to the trial that reached it at the earlier epoch (cheaper to
    reproduce), then to the trial that started first (the caller's order; :func:`order_by` for
    MLflow, which adds the smaller run id last).
    """
    missing = value is None or value != value
    sign = sort_sign(mode)
    return (STATUS_RANK.get(status, len(STATUS_RANK)), missing, 0.0 if missing else sign * value,
            epoch if epoch is not None else 0)


def order_by(value_key: str, epoch_key: str, mode: str) -> list[str]:
    """:func:`rank_key` after the status, as MLflow ``order_by`` clauses (the caller sorts by status)."""
    direction = "DESC" if mode == "max" else "ASC"
    return [f"metrics.`{value_key}` {direction}", f"metrics.`{epoch_key}` ASC",
            "attributes.start_time ASC", "attributes.run_id ASC"]


# A confirmed trial's summary over all folds (its search fold and the confirmation's), logged on its
# search child run: ``confirmed_<objective>`` (the mean, e.g. ``confirmed_best_val_f2``), its ``_std``,
# the folds scored, and the trial's place in the confirmed ranking (1 = the pick).
CONFIRMED_PREFIX = "confirmed_"
CONFIRMED_FOLDS, CONFIRMED_RANK = "confirmed_folds", "confirmed_rank"


def confirmed_key(value_key: str) -> str:
    """The metric holding a confirmed trial's mean objective over folds: ``confirmed_best_val_f2``."""
    return CONFIRMED_PREFIX + value_key
