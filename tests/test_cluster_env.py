"""What every trial worker inherits from the job the search starts, and where a local Ray listens."""

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from motorsearch.search.cluster import connect_ray


def test_trial_workers_get_a_passive_openmp_wait_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # so the raylet cannot inherit it
    connect_ray(dashboard=False)
    try:
        @ray.remote(num_cpus=1)
        def wait_policy():
            return os.environ.get("OMP_WAIT_POLICY")

        assert ray.get(wait_policy.remote()) == "PASSIVE"
    finally:
        ray.shutdown()


def listening_addresses(pids: set[int]) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by one of ``pids`` (from /proc)."""
    owners = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        owners[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owners:  # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host-order
            found.append((ipaddress.ip_address(words), int(port, 16), owners[fields[9]]))
    return found


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parent = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


# Run in a child process: a Ray started with token authentication leaves this process's Ray client
# in token mode (read once per process), which would break every later local Ray of the test session.
_LISTENING_CHILD = """
import json, os, stat, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import ray
from test_cluster_env import descendants, is_loopback, listening_addresses
from motorsearch.search.cluster import connect_ray
info = connect_ray()
try:
    deadline, sockets = time.monotonic() + 30, []
    while time.monotonic() < deadline:  # the dashboard agent opens its ports (metrics too) last
        sockets = listening_addresses(descendants(os.getpid()))
        if len(sockets) >= 8:
            break
        time.sleep(1)
    token = Path(os.environ["HOME"]) / ".ray" / "auth_token"
    print(json.dumps({"started_here": info.started_here, "dashboard": info.dashboard_url,
                      "node": info.nodes[0].address, "sockets": [[str(a), port] for a, port, _ in sockets],
                      "off_loopback": [[str(a), port] for a, port, _ in sockets if not is_loopback(a)],
                      "token_mode": stat.S_IMODE(token.stat().st_mode) if token.is_file() else None}))
finally:
    ray.shutdown()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc")
def test_a_local_search_ray_listens_on_127_0_0_1_only_and_its_token_is_private(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path),  # Ray writes its token under the home folder
           "RAY_ADDRESS": "127.0.0.1:1"}  # a cluster a plain ray.init() would try to join
    env.pop("RAY_AUTH_MODE", None)  # token authentication on, as for a user
    child = subprocess.run([sys.executable, "-c", _LISTENING_CHILD, str(Path(__file__).parent)], env=env,
                           capture_output=True, text=True, timeout=180)
    assert child.returncode == 0, child.stderr[-3000:]
    seen = json.loads(child.stdout.strip().splitlines()[-1])
    assert seen["started_here"] and seen["dashboard"].startswith("http://127.0.0.1:")
    assert seen["node"] == "127.0.0.1"
    assert len(seen["sockets"]) >= 8, seen  # GCS, raylet, workers, dashboard and its agent: all found
    assert seen["off_loopback"] == []
    assert seen["token_mode"] == 0o600
