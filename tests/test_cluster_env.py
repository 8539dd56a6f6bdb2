"""What every trial worker inherits from the job the search starts, and where a local Ray listens."""

import contextlib
import ipaddress
import os
import stat
import time
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


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc")
def test_a_local_search_ray_listens_on_127_0_0_1_only_and_its_token_is_private(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes its token under the home folder
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # token authentication on, as for a user
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster a plain ray.init() would try to join
    info = connect_ray()
    try:
        assert info.started_here and info.dashboard_url.startswith("http://127.0.0.1:")
        assert info.nodes[0].address == "127.0.0.1"
        deadline = time.monotonic() + 30
        sockets = []
        while time.monotonic() < deadline:  # the dashboard agent opens its ports (metrics too) last
            sockets = listening_addresses(descendants(os.getpid()))
            if len(sockets) >= 8:
                break
            time.sleep(1)
        assert len(sockets) >= 8, sockets  # GCS, raylet, workers, dashboard and its agent: all found
        assert [s for s in sockets if not is_loopback(s[0])] == []
        token = tmp_path / ".ray" / "auth_token"
        assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
    finally:
        ray.shutdown()
