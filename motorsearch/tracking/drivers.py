"""Which process runs a search, and what to do with the runs of one that died.

A search's parent run carries its driver (tag ``motorsearch.driver``: host, pid and the process's
start time, so a recycled pid is not mistaken for the driver). A driver killed with SIGKILL, or
whose machine crashed, cannot end its runs: they would stay RUNNING until a resume that may never
come. The next command that opens the experiment on that host (``run``, ``best``, ``export``)
marks them ``interrupted`` (KILLED in MLflow) with :func:`settle_dead_searches`; ``--resume``
still continues such a search. A driver on another host is left alone: nobody here can tell.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mlflow.tracking import MlflowClient

from motorsearch.tracking import schema


def this_driver() -> str:
    """``host:pid:start`` of this process (``start``: its start time in clock ticks since boot, from
    /proc; empty elsewhere): the value of tag ``motorsearch.driver``."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid()) or ''}"


def driver_is_dead(driver: str) -> bool:
    """True when ``driver`` (:func:`this_driver` of another process) ran on this host and is gone; False
    when it lives or ran elsewhere (nobody here can tell)."""
    parts = driver.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid, start = int(parts[1]), parts[2]
    now = _process_start(pid)
    return now is None or bool(start) and now != start


def settle_dead_searches(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark the running searches of ``experiment_id`` whose driver died on this host, and their running
    trials, ``interrupted`` (KILLED in MLflow); returns the parent run ids marked."""
    marked = []
    for run in client.search_runs([experiment_id], filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{schema.ROLE}` = '{schema.ROLE_SEARCH}'")):
        if not driver_is_dead(run.data.tags.get(schema.DRIVER, "")):
            continue
        for child in client.search_runs([experiment_id], filter_string=(
                f"attributes.status = 'RUNNING' and tags.`{schema.PARENT}` = '{run.info.run_id}'")):
            client.set_tag(child.info.run_id, schema.STATUS, schema.INTERRUPTED)
            client.set_terminated(child.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, schema.STATUS, schema.SEARCH_INTERRUPTED)
        client.set_terminated(run.info.run_id, status="KILLED")
        marked.append(run.info.run_id)
    return marked


def _process_start(pid: int) -> str | None:
    """Start time of process ``pid`` (field 22 of /proc/PID/stat); None when there is no such process,
    "" where /proc does not exist."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]
