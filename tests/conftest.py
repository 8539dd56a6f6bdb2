"""Shared test setup: keep every test on the CPU with few threads."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
