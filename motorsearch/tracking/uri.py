"""Which MLflow tracking store a command talks to, checked before any work starts.

Resolution order: an explicit URI (the space file's ``tracking_uri`` or ``--tracking-uri``),
then the ``MLFLOW_TRACKING_URI`` environment variable, then ``sqlite:///<cwd>/mlflow.db`` — the
store a plain ``mlflow ui`` opens when started in the same folder.

Checks (:func:`check_tracking_uri`), so that a search fails at start and not after an hour of
training:

- ``http(s)://``: the server must answer ``GET /health`` within a few seconds. MLflow's own
  client retries for minutes, which is why this check is separate and short.
- ``sqlite:///PATH``: the folder must exist (or be creatable) and be writable (checked without
  creating anything: MLflow makes the file when the first run is written); a database on a
  network file system (NFS, CIFS, Lustre...) draws a warning, as SQLite locking is unreliable
  there. With ``must_exist`` (``best``, ``export``) the database file must already exist.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from motorsearch.environment import folder_problem
from motorsearch.errors import InputError

ENV_VAR = "MLFLOW_TRACKING_URI"
DEFAULT_DB = "mlflow.db"
HEALTH_TIMEOUT_S = 3.0
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "fuse.sshfs", "9p")

log = logging.getLogger(__name__)


def default_tracking_uri(cwd: str | Path | None = None) -> str:
    """``sqlite:///<cwd>/mlflow.db`` with an absolute path (so trials and ``mlflow ui`` agree)."""
    folder = Path(cwd) if cwd is not None else Path.cwd()
    return f"sqlite:///{(folder.resolve() / DEFAULT_DB).as_posix()}"


def resolve_tracking_uri(explicit: str | None = None, *, cwd: str | Path | None = None) -> str:
    """Explicit URI > ``MLFLOW_TRACKING_URI`` > the default SQLite file in ``cwd``.

    A relative ``sqlite:///rel/path.db`` is made absolute against ``cwd`` so that every process
    of a search (and a later ``mlflow ui``) opens the same file.
    """
    if explicit and explicit.strip():
        return _absolute_sqlite(explicit.strip(), cwd)
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return _absolute_sqlite(from_env, cwd)
    return default_tracking_uri(cwd)


def describe_origin(explicit: str | None, *, explicit_origin: str = "--tracking-uri") -> str:
    """Where :func:`resolve_tracking_uri` took the URI from, for error messages."""
    if explicit and explicit.strip():
        return explicit_origin
    if os.environ.get(ENV_VAR, "").strip():
        return f"the {ENV_VAR} environment variable"
    return "the default (no tracking URI given)"


def check_tracking_uri(uri: str, *, origin: str = "the tracking URI", must_exist: bool = False,
                       timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Raise InputError unless the store at ``uri`` can be used; see the module docstring.

    ``origin`` (e.g. "`tracking_uri` in space.yaml") is named in the messages.
    """
    if uri.startswith(("http://", "https://")):
        check_server(uri, origin=origin, timeout_s=timeout_s)
        return
    database = sqlite_path(uri)
    if database is None:
        return  # another backend (postgresql://, databricks, file:); MLflow reports its own errors
    if must_exist and not database.is_file():
        raise InputError(f"no MLflow database at {database} (tracking URI {uri!r} from {origin}); "
                         f"run a search first, or point --tracking-uri / {ENV_VAR} at the store that holds it.")
    folder = database.parent
    problem = folder_problem(folder)  # checked, not created
    if problem:
        raise InputError(f"cannot write the MLflow database {database} (tracking URI from {origin}): {problem}.")
    filesystem = filesystem_type(folder)
    if filesystem in NETWORK_FILESYSTEMS:
        log.warning("The MLflow database %s is on a %s file system; SQLite locking is unreliable there. "
                    "On a cluster run one `mlflow server` and set tracking_uri to its http:// address.",
                    database, filesystem)


def check_server(uri: str, *, origin: str = "the tracking URI", timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """InputError unless an MLflow server answers ``GET <uri>/health`` within ``timeout_s`` seconds."""
    url = uri.rstrip("/") + "/health"
    hint = f"start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`) or fix {origin}."
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the user's own server
            response.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise InputError(f"the MLflow server at {uri} refused access (HTTP {exc.code}); set "
                             f"MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN.") from None
        if exc.code >= 500 or exc.code == 404 and not _answers_api(uri, timeout_s):
            raise InputError(f"the MLflow tracking server at {uri} is not healthy "
                             f"(GET /health answered HTTP {exc.code}); {hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"cannot reach the MLflow tracking server at {uri} within {timeout_s:g} s "
                         f"({reason}); {hint}") from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other scheme or ``:memory:``)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def filesystem_type(path: str | Path) -> str | None:
    """The type (e.g. "ext4", "nfs4") of the mount holding ``path``, from /proc/mounts; None elsewhere."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    resolved = Path(path).resolve().as_posix()
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, fields[2]
    return best_type


def _absolute_sqlite(uri: str, cwd: str | Path | None) -> str:
    database = sqlite_path(uri)
    if database is None or database.is_absolute():
        return uri
    base = Path(cwd) if cwd is not None else Path.cwd()
    query = uri.partition("?")[2]
    absolute = f"sqlite:///{(base.resolve() / database).as_posix()}"
    return f"{absolute}?{query}" if query else absolute


def _answers_api(uri: str, timeout_s: float) -> bool:
    """True when ``/api/2.0/mlflow/experiments/search`` answers (a proxy may hide ``/health``)."""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            response.read(64)
        return True
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    except (urllib.error.URLError, OSError, ValueError):
        return False
