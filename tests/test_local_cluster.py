"""A real multi-process Ray cluster on one machine, wired the way docker/compose.yaml wires it.

What the containers would run is run here as processes, from the compose file itself:
- the ``ray-head`` service: ``docker/entrypoint.sh head`` (0 CPUs, so no trial can land on it),
- the ``ray-worker`` service: ``docker/entrypoint.sh worker`` with 2 CPUs, joining the head; it
  gets the node address 127.0.0.2 so results tell it apart from the head,
- the ``mlflow`` service's command, with SQLite and a folder instead of Postgres and a volume,
- the services' environment (Ray token auth, MLFLOW_TRACKING_URI) and health checks, with
  ports moved to free ones and the container paths (/shared) moved under a temporary folder.

Then a real workload goes through it: a Ray task and a 2-trial ``python -m motorsearch run``.
Every process starts in its own session; teardown ends those sessions (and nothing else)
even when a test fails. Linux only (process sessions are read from /proc).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
WORKER_IP = "127.0.0.2"  # any 127/8 address reaches this machine; it labels the worker node
WORKER_CPUS = 2
START_TIMEOUT_S = 90.0
SEARCH_TIMEOUT_S = 110.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR}`` substitution (a default applies when VAR is unset or empty)."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def session_pids(session_id: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``session_id``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == session_id and state != "Z":
            pids.append(int(entry))
    return pids


def end_sessions(processes: list[subprocess.Popen], *, leaders_only: bool = False, grace_s: float = 8.0) -> None:
    """End every process in the sessions these processes lead, and nothing else.

    ``leaders_only``: SIGTERM only the session leaders first (``ray start --block`` then stops its
    node in order; signalling all of a node's processes at once leaves the GCS hanging). Otherwise
    (or for what is left after ``grace_s``) SIGTERM the whole session; SIGKILL what survives that.
    """
    sessions = [p.pid for p in processes]  # started with start_new_session=True: each leads its session

    def alive() -> list[int]:
        for process in processes:
            process.poll()  # reap the leaders we own
        return [pid for session in sessions for pid in session_pids(session)]

    def signal_all(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait_gone(seconds: float) -> list[int]:
        deadline = time.monotonic() + seconds
        while (left := alive()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    first = [p.pid for p in processes if p.poll() is None] if leaders_only else alive()
    signal_all(first, signal.SIGTERM)
    left = wait_gone(grace_s)
    if left:
        signal_all(left, signal.SIGTERM)
        left = wait_gone(5.0)
    signal_all(left, signal.SIGKILL)
    wait_gone(5.0)
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(5)


def http_get(url: str, *, headers: dict[str, str] | None = None, body: dict | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` (POST with a JSON ``body``); (status, response body). Any Host header can be sent."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    connection = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=timeout)
    try:
        if body is None:
            connection.request("GET", match.group(3), headers=headers or {})
        else:
            connection.request("POST", match.group(3), body=json.dumps(body),
                               headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class LocalCluster:
    """The compose services as local processes; see the module docstring."""

    def __init__(self) -> None:
        self.compose = yaml.safe_load(COMPOSE.read_text())
        # A short folder: Ray's unix sockets live under the temp dir (path limit ~107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="msc", dir="/tmp"))
        (self.gcs_port, self.dashboard_port, self.client_port, self.head_agent_port, self.worker_agent_port,
         self.mlflow_port) = free_ports(6)
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = self._environment("ray-head")  # drivers run in the ray-head container

    # --- the compose file, mapped onto this machine -------------------------------------------
    def service(self, name: str) -> dict:
        return self.compose["services"][name]

    def _host_path(self, container_path: str) -> str:
        """/shared/... inside the containers -> <root>/shared/... here (the same on both nodes)."""
        for volume in self.service("ray-head")["volumes"]:
            source, target = volume.split(":")[:2]
            if source == "shared" and container_path.startswith(target):
                return str(self.root / "shared") + container_path[len(target):]
        return container_path

    def _environment(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        for key, value in self.service(service)["environment"].items():
            env[key] = self._host_path(interpolate(str(value), {}))
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            RAY_HEAD_ADDRESS=f"127.0.0.1:{self.gcs_port}",
            MLFLOW_TRACKING_URI=f"http://127.0.0.1:{self.mlflow_port}",
            RAY_GCS_PORT=str(self.gcs_port),
            RAY_DASHBOARD_PORT=str(self.dashboard_port),
            RAY_DASHBOARD_HOST="127.0.0.1",
            RAY_CLIENT_PORT=str(self.client_port),
            RAY_TEMP_DIR=str(self.root / "ray"),
            OMP_NUM_THREADS="1",
        )
        return env

    @property
    def driver_cwd(self) -> Path:
        """Where drivers run, like /workspace in the ray-head container."""
        return self.root / "head"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def token(self) -> str:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()

    def mlflow_command(self) -> list[str]:
        """The compose ``mlflow`` command with local stores, a free port and one server worker."""
        command = [interpolate(str(part), {}) for part in self.service("mlflow")["command"]]
        replaced = {
            "--host": "127.0.0.1",
            "--port": str(self.mlflow_port),
            "--backend-store-uri": f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}",
            "--artifacts-destination": str(self.root / "mlflow" / "mlartifacts"),
        }
        out = []
        for part in command:
            name = part.split("=", 1)[0]
            out.append(f"{name}={replaced[name]}" if name in replaced else part)
        assert out[:2] == ["mlflow", "server"], out
        return [str(Path(sys.executable).parent / "mlflow"), *out[1:], "--workers=1"]

    def healthcheck(self, service: str, port_in_container: int, port_here: int) -> list[str]:
        test = self.service(service)["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "python", test
        return [sys.executable, *[part.replace(f":{port_in_container}/", f":{port_here}/") for part in test[2:]]]

    # --- processes ------------------------------------------------------------------------------
    def launch(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.processes[name] = subprocess.Popen(command, cwd=REPO, env=env or self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def wait_healthy(self, name: str, check: list[str]) -> float:
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT_S:
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited with {self.processes[name].returncode}:\n{self.log(name)}")
            if subprocess.run(check, env=self.env, capture_output=True, timeout=15).returncode == 0:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"{name} not healthy after {START_TIMEOUT_S:.0f} s:\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> None:
        entrypoint = str(REPO / "docker" / "entrypoint.sh")
        (self.root / "mlflow").mkdir()
        self.driver_cwd.mkdir()
        self.launch("mlflow", self.mlflow_command())
        self.launch("ray-head", ["bash", entrypoint, *self.service("ray-head")["command"]],
                    env={**self.env, "RAY_AGENT_PORT": str(self.head_agent_port)})
        self.startup_s = {"ray-head": self.wait_healthy("ray-head", self.healthcheck(
            "ray-head", 8265, self.dashboard_port))}
        self.launch("ray-worker", ["bash", entrypoint, *self.service("ray-worker")["command"],
                                   f"--node-ip-address={WORKER_IP}"],
                    env={**self._environment("ray-worker"), "RAY_AGENT_PORT": str(self.worker_agent_port),
                         "RAY_NUM_CPUS": str(WORKER_CPUS)})
        self.startup_s["ray-worker"] = self.wait_healthy("ray-worker", self.healthcheck(
            "ray-worker", 52365, self.worker_agent_port))
        self.startup_s["mlflow"] = self.wait_healthy("mlflow", self.healthcheck("mlflow", 5000, self.mlflow_port))

    def stop(self) -> None:
        ray_nodes = [self.processes[name] for name in ("ray-worker", "ray-head") if name in self.processes]
        end_sessions(ray_nodes, leaders_only=True)
        if "mlflow" in self.processes:
            end_sessions([self.processes["mlflow"]])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    try:
        local.start()
        yield local
    finally:
        local.stop()


PROBE = textwrap.dedent("""
    import json, os, sys
    import ray

    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote(num_cpus=1)
    def where():
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}

    placed = ray.get([where.remote() for _ in range(4)])
    nodes = [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU", 0.0),
              "head": "node:__internal_head__" in n["Resources"]} for n in ray.nodes() if n["Alive"]]
    print("PROBE " + json.dumps({"placed": placed, "nodes": nodes}))
""")


@pytest.fixture(scope="module")
def probe(cluster):
    """A driver connects to the cluster as the search would and places four 1-CPU tasks."""
    done = subprocess.run([sys.executable, "-c", PROBE, cluster.address], env=cluster.env, cwd=cluster.driver_cwd,
                          capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    return json.loads(lines[-1].removeprefix("PROBE "))


def test_the_cluster_has_a_head_without_cpus_and_one_worker(probe):
    nodes = sorted(probe["nodes"], key=lambda n: not n["head"])
    assert len(nodes) == 2
    head, worker = nodes
    assert head["head"] and head["cpu"] == 0.0
    assert not worker["head"] and worker["cpu"] == WORKER_CPUS and worker["ip"] == WORKER_IP


def test_tasks_land_on_the_worker_node(probe):
    worker = next(n for n in probe["nodes"] if not n["head"])
    assert len(probe["placed"]) == 4
    assert {p["node_id"] for p in probe["placed"]} == {worker["id"]}
    assert {p["ip"] for p in probe["placed"]} == {WORKER_IP}


def test_token_auth_is_on_and_the_head_wrote_the_shared_token(cluster):
    token_file = Path(cluster.env["RAY_AUTH_TOKEN_PATH"])
    assert token_file.parent.parent == cluster.root / "shared"  # compose: on the shared volume
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert len(cluster.token) == 64
    url = f"http://127.0.0.1:{cluster.dashboard_port}/api/version"
    assert http_get(url)[0] == 401
    assert http_get(url, headers={"Authorization": "Bearer wrong"})[0] == 403
    status, body = http_get(url, headers={"Authorization": f"Bearer {cluster.token}"})
    assert status == 200 and json.loads(body)["ray_version"] == "2.60.0"


def test_mlflow_server_answers_its_rest_api_for_the_compose_host_name(cluster):
    url = f"http://127.0.0.1:{cluster.mlflow_port}/api/2.0/mlflow/experiments/search?max_results=10"
    status, body = http_get(url, headers={"Host": "mlflow:5000"})  # how Ray nodes reach it in compose
    assert status == 200, body
    assert "Default" in {e["name"] for e in json.loads(body)["experiments"]}
    assert http_get(url, headers={"Host": "attacker.example:5000"})[0] == 403  # --allowed-hosts holds


def write_tiny_search(folder: Path, *, name: str) -> Path:
    """A 2-trial, 1-epoch search over a tiny simulated dataset; returns the space file."""
    from motorsearch.data.simulate import simulate_dataset

    data = simulate_dataset(folder / "byu", n_train=6, n_test=0, seed=0, scale=0.3)
    experiment = folder / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "tiny", "device": "cpu",
        "data": {"root": str(data), "cache_dir": str(folder / "cache"), "n_folds": 3},
        "sampling": {"patch_size": [32, 64, 64], "batch_size": 2, "patches_per_epoch": 4},
        "model": {"preset": "tiny"},
        "optim": {"epochs": 1, "warmup_fraction": 0.0, "precision": "fp32"},
        "validation": {"window_batch_size": 1},
    }))
    space = folder / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": name, "experiment": str(experiment), "num_samples": 2, "max_concurrent": 2,
        "resources": {"cpu": 1, "gpu": 0}, "scheduler": {"type": "none"},
        "searcher": {"sampler": "random", "seed": 0},
        "parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }))
    return space


@pytest.fixture(scope="module")
def search(cluster):
    """``python -m motorsearch run SPACE --address HEAD`` as the compose README runs it in ray-head."""
    name = "cluster_probe"
    # As the compose guide runs it: storage on the volume every node mounts, declared shared.
    space = write_tiny_search(cluster.root, name=name)
    storage = cluster.root / "shared" / "ray_results"
    command = [sys.executable, "-m", "motorsearch", "run", str(space), "--address", cluster.address,
               "--storage-path", str(storage), "--storage-shared"]
    process = subprocess.Popen(command,
                               cwd=cluster.driver_cwd, env={**cluster.env, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started = time.monotonic()
    try:
        output, _ = process.communicate(timeout=SEARCH_TIMEOUT_S)
    finally:
        end_sessions([process], grace_s=5.0)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, output[-6000:]
    return {"name": name, "output": output, "seconds": elapsed,
            "experiment": storage / name}


def test_search_trials_ran_on_the_worker_node(search):
    results = sorted(search["experiment"].glob("*/result.json"))
    assert len(results) == 2, search["output"][-4000:]
    for path in results:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert rows, path
        assert {row["node_ip"] for row in rows} == {WORKER_IP}, path
        assert all("val_f2" in row for row in rows)
    assert "leaderboard" in search["output"]


def mlflow_api(cluster: LocalCluster, endpoint: str, body: dict | None = None) -> dict:
    status, payload = http_get(f"http://127.0.0.1:{cluster.mlflow_port}/api/2.0/mlflow/{endpoint}", body=body)
    assert status == 200, (endpoint, status, payload[:500])
    return json.loads(payload)


def test_search_logged_a_parent_and_one_child_per_trial_to_the_server(cluster, search):
    status, payload = http_get(f"http://127.0.0.1:{cluster.mlflow_port}/api/2.0/mlflow/experiments/get-by-name"
                               f"?experiment_name={search['name']}")
    assert status == 200, payload[:500]
    experiment_id = json.loads(payload)["experiment"]["experiment_id"]
    runs = mlflow_api(cluster, "runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [t for t in tags if "mlflow.parentRunId" not in t]
    children = [t for t in tags if "mlflow.parentRunId" in t]
    assert len(parents) == 1 and len(children) == 2
    assert {run["info"]["run_id"] for run in runs if "mlflow.parentRunId" not in
            {t["key"] for t in run["data"].get("tags", [])}} == {c["mlflow.parentRunId"] for c in children}
    # Artifacts went through the server to its --artifacts-destination, none next to the driver.
    assert any((cluster.root / "mlflow" / "mlartifacts").rglob("*.*"))
    assert not (cluster.driver_cwd / "mlruns").exists() and not (cluster.driver_cwd / "mlartifacts").exists()
