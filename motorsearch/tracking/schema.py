"""What a search looks like in MLflow: tag names, artifact paths, statuses, the ordering rule.

One MLflow experiment per search name. In it, one parent run per ``run`` invocation (tag
``motorsearch.role = search``) and one nested child run per Ray trial (``motorsearch.role =
trial``, ``mlflow.parentRunId`` = the parent). Everything that reads runs back (leaderboard,
``best``, ``export``, warm start) goes through these names.
"""

from __future__ import annotations

ROLE = "motorsearch.role"
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag; the UI draws the tree from it

STATUS = "motorsearch.status"
METRIC = "motorsearch.metric"
MODE = "motorsearch.mode"

# parent run
SPACE_FILE = "motorsearch.space_file"
SPACE_SHA256 = "motorsearch.space_sha256"
CODE_VERSION = "motorsearch.version"
GIT_COMMIT = "motorsearch.git_commit"
RAY_ADDRESS = "motorsearch.ray_address"
STORAGE_PATH = "motorsearch.storage_path"
BEST_RUN = "motorsearch.best_run_id"

# child run
TRIAL_ID = "motorsearch.trial_id"
PARAMS_JSON = "motorsearch.params_json"  # the sampled values with their types, for warm starts
BEST_MODEL_SHA256 = "motorsearch.best_model_sha256"
RESTARTS = "motorsearch.restarts"
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
CURVES_PNG = "pictures/training_curves.png"
VALIDATION_PNG = "pictures/validation.png"
# parent artifacts
SPACE_ARTIFACT_DIR = "space"
LEADERBOARD_CSV = "leaderboard.csv"
IMPORTANCE_PNG = "pictures/param_importance.png"

# child summary metrics (logged once, when the trial ends)
BEST_EPOCH = "best_epoch"
LAST_EPOCH = "last_epoch"


def best_metric(metric: str) -> str:
    """Name of the child-run metric holding the trial's best value of ``metric`` over its epochs."""
    return f"best_{metric}"


def order_by(metric: str, mode: str) -> list[str]:
    """The ranking rule of trials, as MLflow ``order_by`` clauses.

    Best value of the search's metric over the trial's epochs first (descending for mode "max",
    ascending for "min"); ties go to the trial that reached it at the earlier epoch (cheaper to
    reproduce), then to the trial that started first, then to the smaller run id.
    """
    direction = "DESC" if mode == "max" else "ASC"
    return [f"metrics.`{best_metric(metric)}` {direction}", f"metrics.`{BEST_EPOCH}` ASC",
            "attributes.start_time ASC", "attributes.run_id ASC"]
