"""Shared test setup: keep every test on the CPU with few threads."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
# spinning OpenMP threads run many times slower on a shared machine (see motorsearch/__main__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
