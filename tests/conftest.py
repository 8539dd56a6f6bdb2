"""Shared test setup: keep every test on the CPU with few threads, and out of the user's files.

MLflow, when a test gives no tracking URI, writes to a database in a temporary folder, never to
``./mlflow.db``. The session fails when it leaves anything new in the checkout (untracked or
ignored files included: ``mlflow.db``, ``runs/``, ``.motorsearch/`` are ignored by git but are
the user's).
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

# the shared tiny tracked search (fixtures `search`, `client`) of the tracking and export tests
pytest_plugins = ["tracking_helpers"]

os.environ.setdefault("OMP_NUM_THREADS", "2")
# spinning OpenMP threads run many times slower on a shared machine (see motorsearch/__main__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]
_SCRATCH = Path(tempfile.mkdtemp(prefix="motorsearch-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SCRATCH / 'mlflow.db'}"
# what tests and tools may create in a checkout: caches of Python, pytest and the linters, the venv
_EXPECTED = (".venv/", ".pytest_cache/", ".ruff_cache/", ".hypothesis/", "__pycache__/", ".egg-info/")


def checkout_state() -> set[str] | None:
    """``git status`` of the checkout, ignored files included (None outside a git checkout)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    lines = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--ignored"], capture_output=True,
                           text=True, check=False).stdout.splitlines()
    return {line for line in lines if not any(part in line for part in _EXPECTED)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._checkout_before = checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)
    before, after = session.config._checkout_before, checkout_state()
    if before is None or after is None or after <= before:
        return
    new = "\n  ".join(sorted(after - before))
    session.config.get_terminal_writer().line(f"\nthe tests left files in the checkout {REPO}:\n  {new}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread: on a shared 2-core machine two threads oversubscribe and run 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def scratch_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with MLflow pointed at the scratch database (``mlflow.set_tracking_uri(None)``
    in a test unsets the variable)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{_SCRATCH / 'mlflow.db'}")


@pytest.fixture
def no_leftover_ray():
    """For tests whose search starts its own local Ray: shut it down after, so the next test may start one."""
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_for_the_module():
    """Like ``no_leftover_ray``, but the searches of one module share the Ray the first one starts."""
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
