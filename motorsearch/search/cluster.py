"""Where a search runs: start or join Ray, and refuse set-ups that can never work.

- ``connect_ray``: a local Ray instance by default, every port it opens bound to 127.0.0.1 (GCS,
  raylet, workers, dashboard, dashboard agent and its metrics endpoint), even when another Ray
  runs on the machine or ``RAY_ADDRESS`` names one; or join an existing
  cluster (``address: auto`` or ``HOST:PORT``) as it is configured; or reuse the instance this
  process already started (tests, notebooks).
- ``local_node``: what a local Ray started here would offer, known before starting it.
- ``check_request``: a trial's ``{cpu, gpu}`` must fit on at least one alive node. Ray would
  otherwise leave such trials PENDING forever (it only warns after a minute).
- ``check_storage``: with more than one node, every node writes checkpoints under
  ``storage_path``, so it must be storage all nodes share: a URI (``s3://``, ``gs://``, ...)
  or a path the space file declares shared with ``storage_shared: true`` (an NFS mount seen at
  the same path on every node). Ray no longer syncs trial folders to the head node.

Ray 2.60 turns token authentication on for new local clusters: the dashboard answers 401 until
the browser is given the token ``ray get-auth-token`` prints. ``RAY_AUTH_MODE=disabled`` in the
environment before the search starts switches it off. The token file (``~/.ray/auth_token``) is
made readable by its owner only (Ray writes it world-readable). A local Ray started by the search
ends with it, and its dashboard too; ``make ray-start`` keeps one running that ``--address auto`` joins.

Ray binds its gRPC servers to every interface unless the node's IP is the loopback address, which
it chooses only in its single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on
macOS and Windows). A local search turns that mode on while it starts Ray: the processes Ray starts
then bind 127.0.0.1 and inherit nothing else from it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from motorsearch.environment import restored
from motorsearch.errors import InputError
from motorsearch.search.space import Resources, is_uri

LOCALHOST = "127.0.0.1"
TOKEN_FILE = Path(".ray", "auth_token")  # under the home folder: where Ray writes the token of a new local cluster
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class Node:
    """An alive Ray node and the resources it offers (``{"CPU": 2.0, "GPU": 1.0, ...}``)."""

    node_id: str
    address: str
    resources: Mapping[str, float]


@dataclass
class ClusterInfo:
    """The Ray instance a search runs on."""

    nodes: list[Node]
    resources: dict[str, float]
    started_here: bool
    address: str | None = None
    dashboard_url: str | None = None
    token_auth: bool = False
    notes: list[str] = field(default_factory=list)


def connect_ray(address: str | None = None, *, dashboard: bool = True) -> ClusterInfo:
    """Join ``address`` ("auto", "HOST:PORT", "ray://...") or start a local Ray; reuse a running one."""
    import ray

    started_here = False
    dashboard_url = None
    if ray.is_initialized():
        dashboard_url = _dashboard_url()
    else:
        # Spinning OpenMP threads run several times slower when trials share cores (measured 6x on
        # 2 cores); trial workers load torch before our code runs, so it must come from the job env.
        worker_env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        # "local", not None: ray.init(address=None) joins whatever cluster RAY_ADDRESS or the last `ray start`
        # on this machine names (another user's, a test's), without its localhost binding; joining is --address's
        options: dict[str, Any] = {"address": address or "local", "log_to_driver": True,
                                   "runtime_env": {"env_vars": worker_env}}
        if address is None:
            options.update(include_dashboard=dashboard, dashboard_host=LOCALHOST)
        try:
            with loopback_only() if address is None else contextlib.nullcontext():
                context = ray.init(**options)
        except ConnectionError as exc:
            raise InputError(f"cannot join the Ray cluster at address={address!r}: {exc}. Start it with "
                             "`ray start --head` or pass another --address.") from None
        started_here = address is None
        if started_here:
            owner_only(Path.home() / TOKEN_FILE)
        dashboard_url = getattr(context, "dashboard_url", None) or None
    if dashboard_url and "://" not in dashboard_url:
        dashboard_url = f"http://{dashboard_url}"
    nodes = alive_nodes()
    return ClusterInfo(nodes=nodes, resources={k: float(v) for k, v in ray.cluster_resources().items()},
                       started_here=started_here, address=address, dashboard_url=dashboard_url,
                       token_auth=_token_auth_enabled())


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block a new local Ray takes 127.0.0.1 as its node IP, so it binds only there (see the
    module docstring): the environment variable for the processes it starts, Ray's constant, read
    when ``ray`` was imported, for this one."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with restored(_SINGLE_MACHINE_ENV, "0"):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def owner_only(path: Path) -> None:
    """Make ``path`` readable and writable by its owner only, when it exists and is ours."""
    try:
        if path.is_file() and path.stat().st_uid == os.getuid():
            path.chmod(0o600)
    except OSError:  # another user's home, a read-only mount: leave it as it is
        pass


def local_node() -> Node | None:
    """The node a local ``ray.init()`` would start here, with the CPUs and GPUs Ray would detect (its own
    detection, ``CUDA_VISIBLE_DEVICES`` included); None when that detection is not available."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        manager = get_accelerator_manager_for_resource("GPU")
        gpus = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        if visible is not None:
            gpus = min(gpus, len(visible))
        return Node(node_id="local", address=LOCALHOST, resources={"CPU": float(get_num_cpus()), "GPU": float(gpus)})
    except Exception:  # private API of Ray: the check after Ray starts still runs
        return None


def alive_nodes() -> list[Node]:
    import ray

    return [Node(node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""), resources=dict(n.get("Resources", {})))
            for n in ray.nodes() if n.get("Alive")]


def check_request(resources: Resources, nodes: Sequence[Node]) -> None:
    """Raise InputError unless some node can run one trial asking for ``resources``."""
    totals = _totals(nodes)
    summary = describe_resources(totals)
    if resources.gpu > 0 and totals.get("GPU", 0.0) == 0:
        raise InputError(f"resources.gpu={_number(resources.gpu)} but the cluster has no GPU (cluster resources: "
                         f"{summary}). Set resources.gpu: 0 to train on CPUs, or join a cluster with GPUs (--address).")
    for node in nodes:
        if node.resources.get("CPU", 0.0) >= resources.cpu and node.resources.get("GPU", 0.0) >= resources.gpu:
            return
    most_cpu = max((n.resources.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpu = max((n.resources.get("GPU", 0.0) for n in nodes), default=0.0)
    if resources.gpu > most_gpu:
        raise InputError(f"resources.gpu={_number(resources.gpu)} but no node has more than {_number(most_gpu)} "
                         f"GPU(s) (cluster resources: {summary}); a trial runs on one node.")
    if resources.cpu > most_cpu:
        raise InputError(f"resources.cpu={_number(resources.cpu)} but no node has more than {_number(most_cpu)} "
                         f"CPU(s) (cluster resources: {summary}); a trial runs on one node.")
    raise InputError(f"resources.cpu={_number(resources.cpu)} with resources.gpu={_number(resources.gpu)} fits on "
                     f"no single node (nodes: {'; '.join(describe_resources(n.resources) for n in nodes)}).")


def check_storage(storage_path: str, *, shared: bool, nodes: Sequence[Node]) -> None:
    """Raise InputError when several nodes would write to a ``storage_path`` only one of them sees."""
    if len(nodes) <= 1 or shared or is_uri(storage_path):
        return
    raise InputError(
        f"storage_path={storage_path!r} is a local folder, but the cluster has {len(nodes)} nodes and each writes "
        "its trials' checkpoints there. Use storage every node shares: an s3:// or gs:// URI, or a shared "
        "filesystem mounted at the same path on every node (e.g. NFS) declared with `storage_shared: true` "
        "in the space file.")


def dashboard_message(info: ClusterInfo) -> str:
    """What to print about the dashboard: its URL (with the port it really took) and how to get in."""
    if not info.dashboard_url:
        return "Ray dashboard: not available (install ray[default] for it)."
    port = urlsplit(info.dashboard_url).port
    lines = [f"Ray dashboard: {info.dashboard_url}"]
    if info.token_auth:
        lines.append(f"  token authentication is on: open the URL and paste the token printed by "
                     f"`{env_command('ray')} get-auth-token` (set RAY_AUTH_MODE=disabled before starting to switch "
                     "it off).")
    if info.started_here:
        lines.append(f"  bound to 127.0.0.1; from another machine: ssh -L {port}:127.0.0.1:{port} <this host>")
        lines.append("  it closes when the search ends; to keep one open, start Ray with `make ray-start` and run "
                     "the search with --address auto")
    return "\n".join(lines)


def env_command(tool: str) -> str:
    """How to type console script ``tool`` of the Python environment running motorsearch, from the
    current directory: ``.venv/bin/mlflow`` when the environment is not activated (``make`` never
    activates it), the bare name when the shell finds that same script first. A script not installed
    yet gets the path it will have, so the command works once it is."""
    import shutil

    script = Path(sys.executable).parent / tool  # where it is, or will be once installed (an optional extra)
    found = shutil.which(tool)
    if found and script.is_file() and Path(found).resolve() == script.resolve():
        return tool
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def describe_resources(resources: Mapping[str, float]) -> str:
    """"CPU 2, GPU 1" (CPU and GPU first, memory and node labels left out)."""
    parts = [f"{name} {_number(resources[name])}" for name in ("CPU", "GPU") if resources.get(name)]
    return ", ".join(parts) or "none"


def _totals(nodes: Sequence[Node]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for node in nodes:
        for name, value in node.resources.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _dashboard_url() -> str | None:
    try:
        from ray._private.worker import get_dashboard_url

        return get_dashboard_url() or None
    except Exception:  # internal helper; the URL is a convenience only
        return None


def _token_auth_enabled() -> bool:
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode

        return get_authentication_mode() == AuthenticationMode.TOKEN
    except Exception:  # older or newer Ray without the API: say nothing about tokens
        return False
