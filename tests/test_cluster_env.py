"""What every trial worker inherits from the job the search starts."""

import os

import ray

from motorsearch.search.cluster import connect


def test_trial_workers_get_a_passive_openmp_wait_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # so the raylet cannot inherit it
    connect(dashboard=False)
    try:
        @ray.remote(num_cpus=1)
        def wait_policy():
            return os.environ.get("OMP_WAIT_POLICY")

        assert ray.get(wait_policy.remote()) == "PASSIVE"
    finally:
        ray.shutdown()
