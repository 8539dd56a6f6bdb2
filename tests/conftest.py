"""Shared test setup: keep every test on the CPU with few threads."""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# spinning OpenMP threads run many times slower on a shared machine (see motorsearch/__main__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread: on a shared 2-core machine two threads oversubscribe and run 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the tests of one module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
