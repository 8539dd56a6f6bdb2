# The Quick-start commands. Each creates .venv/ on first use and reinstalls when pyproject.toml
# changes, so a fresh clone needs nothing else. The dashboard targets run in the foreground
# (Ctrl+C stops them); each serves on 127.0.0.1 only.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# what the dashboards open: the tracking database and the study `make demo` writes (override on the command line)
TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
SEARCH ?= demo
STUDY ?= sqlite:///$(CURDIR)/runs/$(SEARCH)/optuna.db
RAY_DASHBOARD_PORT ?= 8265

.PHONY: demo test bench gpu-check study study-v2 mlflow-ui optuna-dashboard ray-start ray-stop

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test,dashboards]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/python -m motorsearch run search_spaces/demo.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.report

# On a machine with one CUDA GPU: every section in <= 8 minutes, benchmarks/GPU_REPORT.md rewritten after each
# (the timeout keeps what finished). ARGS=--dry-run: tiny sizes on the CPU, as CI runs it.
gpu-check: $(STAMP)
	timeout 540 $(VENV)/bin/python -m benchmarks.gpu_check $(ARGS)

study: $(STAMP)
	$(VENV)/bin/python -m studies.search_efficiency.study

# the second run: from a search to the final model (confirm, refit, ensemble), scored without voxel spacing
study-v2: $(STAMP)
	$(VENV)/bin/python -m studies.search_efficiency.study_v2

mlflow-ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri $(TRACKING_URI) --host 127.0.0.1 --port 5000

optuna-dashboard: $(STAMP)
	$(VENV)/bin/optuna-dashboard $(STUDY) --host 127.0.0.1 --port 8080

# A Ray head that outlives searches: run them with --address auto. Token auth is on (Ray 2.60's default).
ray-start: $(STAMP)
	@$(VENV)/bin/python -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $(RAY_DASHBOARD_PORT))) == 0)" \
		|| { echo "port $(RAY_DASHBOARD_PORT) is taken (another Ray?); try: make ray-start RAY_DASHBOARD_PORT=8266"; exit 2; }
	$(VENV)/bin/ray start --head --node-ip-address 127.0.0.1 --dashboard-host 127.0.0.1 --dashboard-port $(RAY_DASHBOARD_PORT) --disable-usage-stats
	@echo "Ray dashboard: http://127.0.0.1:$(RAY_DASHBOARD_PORT)  token: $$($(VENV)/bin/ray get-auth-token 2>/dev/null || echo '(token auth is off)')"

# Stops every Ray process of this user on this machine (Ray's own `ray stop`).
ray-stop: $(STAMP)
	$(VENV)/bin/ray stop
