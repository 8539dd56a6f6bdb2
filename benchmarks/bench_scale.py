"""Past one machine, by simulation: the search's driver under many nodes and many short trials.

A ``ray.cluster_utils.Cluster`` of ``--nodes`` raylets on this machine, each declaring
``--gpus-per-node`` logical GPUs (no card: Ray only counts them), runs a search of ``--trials``
trials through the product's own path — ``tracked_search`` (what ``motorsearch run`` does: the
space checks, joining the cluster by its address, the MLflow parent run, the ``TrialTracker``
callback, the Optuna study in ``<storage>/<name>/optuna.db``) — with one thing swapped: each trial
runs :func:`sleeping_trainable` instead of training, ``--epochs`` epochs of ``--epoch-seconds`` of
sleep, reporting what the product's tracking reads (``epoch``, ``val_f2``, the objective
``best_val_f2``/``best_epoch``, ``reported_at``, where it ran) and no checkpoint. Each trial asks
``{cpu: 1, gpu: 1}``, so the cluster runs nodes x GPUs trials at a time.

Reported:

- makespan (``tracked_search`` from call to return) against the ideal
  ``ceil(trials / slots) x epochs x epoch_seconds``, and the overhead between them;
- slot utilisation: the trials' own time (start of the trainable to its last report) over
  ``slots x`` (first trial start to last report); the rest is process start-up and scheduling;
- results per second the driver handled, against the rate the trials offered (slots / epoch_seconds);
- the driver's time in MLflow (``TrialTracker`` hooks: per result, per trial start, per trial end)
  and in Optuna (the searcher's ``suggest``, per-result ``report`` and ``tell``; the storage's
  writes), as median / 95th percentile / max;
- the lag from a trial's report (``reported_at``) to its MLflow write (the metric's timestamp);
- the driver's CPU time per result, and the results per second that would fill one core with it
  (an estimate of where the driver alone saturates, labelled as such).

The MLflow and Optuna timings come from timers wrapped around the real methods in the driver
process for the duration of the run (the calls pass through unchanged, and are restored after).
Data preparation and the cluster's start are outside the timed span.

    python -m benchmarks.bench_scale                                  # 16 nodes, 256 trials x 4 s
    python -m benchmarks.bench_scale --nodes 4 --trials 32 --epochs 2 --no-report   # a smoke run

The report (``--out``, default ``benchmarks/SCALE_REPORT.md``) is rewritten with the new table;
hand-written sections (from its first ``## `` heading on) are kept below it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.table import format_table, row

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = REPO / "benchmarks" / "SCALE_REPORT.md"
OBJECT_STORE_BYTES = 80 * 1024**2  # per node; Ray's minimum is 75 MiB, its default 30 % of the RAM per raylet
# Ray Tune's own scalability benchmark ("bookkeeping overhead", docs.ray.io tune-scalability):
# 10,000 trials of 1 s, 16 at a time on one 16-CPU node, 715.27 s against the 625 s minimum.
RAY_ANCHOR_OVERHEAD_PCT = 100 * (715.27 / 625 - 1)


def sleeping_trainable(epoch_seconds: float) -> Callable[..., None]:
    """A trial that sleeps ``epoch_seconds`` per epoch instead of training (``run_search(trainable=...)``).

    It trains the base experiment's ``optim.epochs`` epochs and reports after each one what
    ``train_trial`` reports that tracking reads: ``epoch``, ``val_f2`` (a made-up score that grows
    with the epoch and peaks at ``optim.lr`` = 3e-3), the objective (``Objective.report``), where
    it ran, ``trial_started_at`` and ``reported_at``. No checkpoint. A closure, so Ray pickles it
    by value and the worker processes need not import this module.
    """

    def sleeping_trial(config: dict[str, Any], setup: Any) -> None:
        import ray
        from ray import tune

        started_at = time.time()
        where = {"node_id": ray.get_runtime_context().get_node_id(),
                 "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()), "device": "cpu",
                 "trial_started_at": started_at, "resumed_from_epoch": 0}
        lr = float(config.get("optim.lr", setup.base["optim"]["lr"]))
        history: list[dict[str, float]] = []
        for epoch in range(1, int(setup.base["optim"]["epochs"]) + 1):
            time.sleep(epoch_seconds)
            score = max(0.0, 1.0 - abs(math.log10(lr) - math.log10(3e-3)) / 3) * (1 - 0.5**epoch)
            metrics = {"epoch": epoch, "val_f2": score, "epoch_time_s": epoch_seconds}
            history.append(metrics)
            tune.report({**metrics, **setup.objective.report(history), **where, "reported_at": time.time()})

    return sleeping_trial


@dataclass
class Timings:
    """Seconds per call of each timed method, by label."""

    calls: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, seconds: float) -> None:
        self.calls.setdefault(label, []).append(seconds)

    @contextlib.contextmanager
    def around(self, owner: Any, names: dict[str, str]) -> Iterator[None]:
        """Within the block, each ``owner.<attribute>`` in ``names`` (attribute -> label) is timed."""
        originals = {name: owner.__dict__[name] for name in names}
        for name, label in names.items():
            setattr(owner, name, self._timed(originals[name], label))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(owner, name, original)

    @contextlib.contextmanager
    def stamped(self, owner: Any, name: str, stamps: dict[str, float]) -> Iterator[None]:
        """Within the block, ``owner.<name>(self, trial, ...)`` records ``stamps[trial.trial_id] = time.time()``."""
        original = owner.__dict__[name]

        def stamp(this: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
            stamps.setdefault(trial.trial_id, time.time())
            return original(this, trial, *args, **kwargs)

        setattr(owner, name, stamp)
        try:
            yield
        finally:
            setattr(owner, name, original)

    def _timed(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        timings = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timings.add(label, time.perf_counter() - started)

        return timed


class CpuClock:
    """The driver process's CPU time (all threads), sampled with the wall clock every ``every_s`` seconds."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (wall, this process's CPU s, the machine's busy CPU s)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="bench-cpu-clock")

    def __enter__(self) -> CpuClock:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def between(self, start: float, end: float, *, machine: bool = False) -> float:
        """CPU seconds this process (or with ``machine``, every process) spent from wall time ``start``
        to ``end`` (to the nearest samples inside)."""
        inside = [sample[2 if machine else 1] for sample in self.samples if start <= sample[0] <= end] or [0.0]
        return max(inside) - min(inside)

    def _sample(self) -> None:
        while not self._stop.wait(self._every_s):
            self._take()

    def _take(self) -> None:
        self.samples.append((time.time(), time.process_time(), _machine_busy_seconds()))


def _machine_busy_seconds() -> float:
    """CPU seconds every core of this machine has been busy since boot (``/proc/stat``; 0 elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run(*, nodes: int = 16, gpus_per_node: int = 1, trials: int = 256, epochs: int = 4, epoch_seconds: float = 1.0,
        sampler: str = "tpe", tracking_uri: str | None = None, workdir: str | Path | None = None,
        out: Any = None) -> list[dict]:
    """Run the simulation; rows ``{metric, value, unit, note}`` (see the module docstring).
    ``tracking_uri``: MLflow's (default: a SQLite file in ``workdir``, as ``run`` makes one in its folder)."""
    import mlflow
    import optuna
    import ray
    from ray.cluster_utils import Cluster
    from ray.tune.execution.tune_controller import TuneController  # private: only timed, see stamped()

    from motorsearch.cli.run import tracked_search
    from motorsearch.data.cache import prepare
    from motorsearch.search import study
    from motorsearch.search.space_file import load_space
    from motorsearch.tracking import schema
    from motorsearch.tracking.search_runs import TrialTracker

    _check(nodes=nodes, gpus_per_node=gpus_per_node, trials=trials, epochs=epochs, epoch_seconds=epoch_seconds)
    folder = Path(workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    if ray.is_initialized():
        raise RuntimeError("bench_scale starts its own cluster; this process already has a Ray instance")
    node_args = {"num_cpus": gpus_per_node, "num_gpus": gpus_per_node, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**node_args)
        cluster.wait_for_nodes()
        space_file = _write_space(folder, trials=trials, epochs=epochs, slots=nodes * gpus_per_node, sampler=sampler,
                                  address=cluster.address,
                                  tracking_uri=tracking_uri or f"sqlite:///{folder / 'mlflow.db'}")
        space = load_space(space_file)
        prepare(space.base.data)  # a one-time cost outside the timed span (trials never read it)
        timings = Timings()
        with contextlib.ExitStack() as stack:
            stack.enter_context(timings.around(TrialTracker, {
                "on_trial_result": "mlflow: per result", "on_trial_start": "mlflow: trial start (run, params, config)",
                "_finalize": "mlflow: trial end (summary, curves; background thread)"}))
            stack.enter_context(timings.around(study.StudySearch, {
                "suggest": "optuna: suggest (sample + write)", "on_trial_result": "optuna: per result (report)",
                "on_trial_complete": "optuna: trial end (tell)"}))
            stack.enter_context(timings.around(study, {"link_run": "optuna: link the MLflow run"}))
            stack.enter_context(timings.around(optuna.storages.RDBStorage, {
                name: "optuna storage: one write" for name in (
                    "create_new_trial", "set_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
                    "set_trial_user_attr", "set_trial_system_attr")}))
            scheduled: dict[str, float] = {}  # trial id -> when Tune asked Ray for its process
            stack.enter_context(timings.stamped(TuneController, "_schedule_trial_actor", scheduled))
            cpu = stack.enter_context(CpuClock())
            started = time.time()
            outcome, search = tracked_search(space, space_file=space_file, out=out or io.StringIO(),
                                             trainable=sleeping_trainable(epoch_seconds))
            makespan = time.time() - started
        reports = _reports(search.tracking_uri, search.run_id)
    finally:
        ray.shutdown()
        cluster.shutdown()
        mlflow.set_tracking_uri(None)
    return summarise(reports, timings, nodes=nodes, gpus_per_node=gpus_per_node, trials=trials, epochs=epochs,
                     epoch_seconds=epoch_seconds, makespan=makespan, cpu=cpu, started=started,
                     finished=sum(r.status == schema.FINISHED for r in outcome.leaderboard),
                     nodes_used=len({r.metrics.get("node_id") for r in outcome.results if r.metrics}),
                     start_latency=[r.metrics["trial_started_at"] - scheduled[r.metrics["trial_id"]]
                                    for r in outcome.results if r.metrics and r.metrics.get("trial_id") in scheduled])


def summarise(reports: list[dict[str, float]], timings: Timings, *, nodes: int, gpus_per_node: int, trials: int,
              epochs: int, epoch_seconds: float, makespan: float, cpu: CpuClock, started: float,
              finished: int, nodes_used: int, start_latency: list[float]) -> list[dict]:
    """The table's rows from the trials' reports (as MLflow holds them) and the driver's timers."""
    slots = nodes * gpus_per_node
    ideal = math.ceil(trials / slots) * epochs * epoch_seconds
    by_trial: dict[str, list[dict[str, float]]] = {}
    for report in reports:
        by_trial.setdefault(report["run"], []).append(report)
    first_start = min(r["trial_started_at"] for r in reports)
    last_report = max(r["reported_at"] for r in reports)
    busy = sum(max(r["reported_at"] for r in rs) - rs[0]["trial_started_at"] for rs in by_trial.values())
    span = last_report - first_start
    lags = [r["logged_at"] - r["reported_at"] for r in reports]
    shape = f"{nodes} nodes x {gpus_per_node} GPU, {trials} trials x {epochs} epochs x {epoch_seconds:g} s"
    rows = [
        row("trials finished", finished, "trials", f"{shape}; ran on {nodes_used} nodes"),
        row("makespan", makespan, "s", "tracked_search, call to return (parent run, Tune, ranking, study settled)"),
        row("ideal makespan", ideal, "s", f"ceil({trials} / {slots} slots) x {epochs} x {epoch_seconds:g} s"),
        row("overhead over the ideal", 100 * (makespan / ideal - 1), "%",
            f"Ray Tune's release test: +{RAY_ANCHOR_OVERHEAD_PCT:.0f} % (10,000 x 1 s trials, 16 slots, 1 node)"),
        row("time to first trial", first_start - started, "s", "call to the first trainable running"),
        row("after the last report", started + makespan - last_report, "s",
            "last report to return: trial ends, MLflow uploads, ranking, study settled"),
        *([row("trial start latency, median", _quantile(start_latency, 0.5), "s",
               f"Tune asks for the trial's process to its trainable running; p95 "
               f"{_quantile(start_latency, 0.95):.1f} s (a new process per trial: REUSE_ACTORS = False)")]
          if start_latency else []),
        row("slot utilisation", 100 * busy / (slots * span), "%",
            "trials' own time / (slots x first start to last report); the rest: process start, scheduling"),
        row("results handled", len(reports) / span, "results/s",
            f"{len(reports)} results; the trials offered up to {slots / epoch_seconds:g}/s"),
        row("report -> MLflow lag, median", _quantile(lags, 0.5), "s", "reported_at to the metric's MLflow timestamp"),
        row("report -> MLflow lag, p95", _quantile(lags, 0.95), "s", f"max {max(lags):.2f} s"),
    ]
    for label, seconds in sorted(timings.calls.items()):
        tenth = max(1, len(seconds) // 10)
        rows.append(row(f"{label}, median", 1000 * _quantile(seconds, 0.5), "ms",
                        f"p95 {1000 * _quantile(seconds, 0.95):.1f} ms, max {1000 * max(seconds):.0f} ms, "
                        f"{len(seconds)} calls, {sum(seconds):.1f} s in all; median of the first tenth "
                        f"{1000 * _quantile(seconds[:tenth], 0.5):.1f} ms, of the last "
                        f"{1000 * _quantile(seconds[-tenth:], 0.5):.1f} ms"))
    steady = cpu.between(first_start, last_report)
    per_result = steady / len(reports)
    rows += [
        row("driver CPU time", cpu.between(started, started + makespan), "s",
            f"the driver process, all threads, over the makespan of {makespan:.0f} s"),
        row("driver CPU while trials run", 100 * steady / span, "% of a core",
            "first trial start to last report; 100 % = one core busy"),
        row("machine CPU while trials run", 100 * cpu.between(first_start, last_report, machine=True) / span,
            "% of a core", f"every process on the {os.cpu_count()} cores (Ray, trials, the driver, other jobs)"),
        row("driver CPU per result", 1000 * per_result, "ms",
            "while trials run: Tune, MLflow, Optuna together / results"),
        row("results/s that fill one driver core", 1 / per_result, "results/s",
            "ESTIMATE (1 / CPU per result): where the driver alone would saturate"),
    ]
    return rows


def write_report(rows: list[dict], path: Path, *, machine: str) -> str:
    """Rewrite ``path``: the new table above the hand-written sections it already had."""
    from benchmarks.report import kept_sections, markdown
    from motorsearch.atomic import write_text

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"# Many nodes, by simulation\n\nMeasured {stamp} on: {machine}. Command: "
            f"`{_command()}`.\n\n{markdown([('scale', rows)])}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text + kept_sections(path))
    return text


def _reports(tracking_uri: str, parent_run_id: str) -> list[dict[str, float]]:
    """Every trial report as MLflow holds it: the trial's ``reported_at`` and when the driver logged it."""
    from mlflow.tracking import MlflowClient

    from motorsearch.tracking import schema

    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], max_results=10_000,
                                  filter_string=f"tags.`{schema.PARENT}` = '{parent_run_id}'")
    reports = []
    for child in children:
        started = child.data.metrics.get(f"{schema.SYS_PREFIX}trial_started_at")
        for metric in client.get_metric_history(child.info.run_id, f"{schema.SYS_PREFIX}reported_at"):
            reports.append({"run": child.info.run_id, "epoch": metric.step, "reported_at": metric.value,
                            "logged_at": metric.timestamp / 1000, "trial_started_at": started})
    if not reports:
        raise RuntimeError(f"no trial reports in MLflow under parent run {parent_run_id}")
    return reports


def _write_space(folder: Path, *, trials: int, epochs: int, slots: int, sampler: str, address: str,
                 tracking_uri: str) -> Path:
    space = {
        "name": "scale",
        "experiment": str(REPO / "experiments" / "synthetic_demo.yaml"),
        "overrides": {"device": "cpu", "optim.epochs": epochs, "data.cache_dir": str(folder / "cache"),
                      "data.synthetic.n_train": 2, "data.synthetic.n_test": 0, "data.n_folds": 2},
        "num_samples": trials,
        "max_concurrent": slots,
        "resources": {"cpu": 1, "gpu": 1},
        "scheduler": {"type": "none"},
        "searcher": {"sampler": sampler, "seed": 0, "n_startup_trials": 10},
        "storage_path": str(folder / "runs"),
        "storage_shared": True,  # every raylet is on this machine: the folder is shared
        "tracking_uri": tracking_uri,
        "address": address,
        "max_failures": 0,
        "parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                       "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal"]}},
    }
    path = folder / "scale_space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _check(**values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ValueError(f"`{key}` must be positive, but got {key}={value}.")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[min(98, max(0, round(100 * q) - 1))]


def _command() -> str:
    import sys

    return " ".join(["python -m benchmarks.bench_scale", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16, help="raylets in the simulated cluster (default 16)")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="logical GPUs each node declares (default 1)")
    parser.add_argument("--trials", type=int, default=256, help="trials in the search (default 256)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (default 4)")
    parser.add_argument("--epoch-seconds", type=float, default=1.0, help="sleep per epoch (default 1.0)")
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "random"), help="Optuna sampler (default tpe)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. an `mlflow server` (default: SQLite in the "
                        "work folder)")
    parser.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=DEFAULT_REPORT, help="the report (default %(default)s)")
    parser.add_argument("--no-report", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows = run(nodes=args.nodes, gpus_per_node=args.gpus_per_node, trials=args.trials, epochs=args.epochs,
               epoch_seconds=args.epoch_seconds, sampler=args.sampler, tracking_uri=args.tracking_uri,
               workdir=args.workdir)
    print(format_table(rows))
    if not args.no_report:
        from benchmarks.report import machine

        write_report(rows, args.out, machine=f"{machine()}; load average {os.getloadavg()[0]:.1f} at the end")
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
