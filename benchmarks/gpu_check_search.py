"""The ``search`` section of the GPU check (``benchmarks.gpu_check``): trials sharing a card against trials alone.

A real search through the product's runner (``run_search``, Optuna storage, ASHA) on simulated
data: ``Sizes.shared_trials`` trials, ``shared_concurrent`` at a time with ``gpu: shared_gpu``
each, then ``alone_trials`` trials with a whole card each, for the same epochs. It reports the
trial-epochs per second of both and their ratio, each trial's device id, and the GPU memory of
each trial process as ``nvidia-smi`` saw it (sampled twice a second).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from benchmarks.table import row

if TYPE_CHECKING:
    from benchmarks.gpu_check import Check


def search(check: Check) -> list[dict]:
    import ray

    from benchmarks.gpu_check import simulated_data

    s = check.sizes
    data = simulated_data(check.workdir / "search_data")
    cpus = os.cpu_count() or 2
    per_trial = max(1, cpus // s.shared_concurrent) if check.device.type == "cuda" else 0.5
    gpus = None if check.device.type == "cuda" else 1  # the dry run declares one logical GPU
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    memory = GpuMemoryWatch()
    try:
        memory.start()
        shared = _search_run(check, "shared", data, trials=s.shared_trials, concurrent=s.shared_concurrent,
                             resources={"cpu": per_trial, "gpu": s.shared_gpu},
                             scheduler={"type": "asha", "max_epochs": s.search_epochs, "grace_period": 1,
                                        "reduction_factor": 2})
        alone = _search_run(check, "alone", data, trials=s.alone_trials, concurrent=1,
                            resources={"cpu": per_trial, "gpu": 1}, scheduler={"type": "none"})
    finally:
        memory.stop()
        ray.shutdown()
    rows = []
    for label, run in (("shared", shared), ("alone", alone)):
        ids_ok = all(len(t["gpu_ids"].split(",")) == 1 and t["device"] == check.device.type for t in run.trials)
        status = check.expect(ids_ok and len(run.trials) == run.asked, f"search {label}: one device id per trial")
        peaks = [memory.peak_mib.get(pid) for pid in run.pids]
        shown = ", ".join(f"{p:.0f}" for p in peaks if p is not None) or "n/a (no nvidia-smi)"
        rows.append(row(f"search {label}: trial-epochs per second", run.epochs / run.seconds, "epochs/s",
                        f"{status}: {len(run.trials)} trials x {run.resources}, {run.concurrent} at a time, "
                        f"{run.epochs} trial-epochs in {run.seconds:.0f} s, {run.stopped} stopped early by ASHA; "
                        f"device ids {sorted({t['gpu_ids'] for t in run.trials})}; GPU MiB per trial process: {shown}"))
    rows.append(row("search: shared / alone throughput", (shared.epochs / shared.seconds) / (alone.epochs / alone.seconds),
                    "x", f"{s.shared_concurrent} trials x gpu {s.shared_gpu} against one trial x gpu 1"))
    return rows


@dataclass
class _SearchRun:
    trials: list[dict]
    pids: list[int]
    asked: int
    concurrent: int
    resources: dict
    epochs: int
    stopped: int
    seconds: float


def _search_run(check: Check, name: str, data: Path, *, trials: int, concurrent: int, resources: dict,
                scheduler: dict) -> _SearchRun:
    from motorsearch.search.runner import run_search
    from motorsearch.search.space_file import load_space
    from motorsearch.search.trainable import read_attempts

    s = check.sizes
    space = {
        "name": name, "num_samples": trials, "max_concurrent": concurrent, "resources": resources,
        "scheduler": scheduler, "searcher": {"sampler": "random", "seed": 0}, "max_failures": 0,
        "storage_path": str(check.workdir / "runs"),
        "overrides": {"device": "auto", "data.root": str(data), "data.cache_dir": str(check.workdir / "cache"),
                      "data.n_folds": 2, "data.spacing": 16.0, "model.preset": s.preset, "optim.epochs": s.search_epochs,
                      "optim.precision": "auto", "sampling.patch_size": list(s.search_patch), "sampling.batch_size": 2,
                      "sampling.patches_per_epoch": 8, "sampling.num_workers": 0, "validation.every": 1,
                      "validation.overlap": 0.25, "validation.window_batch_size": 4},
        "parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    }
    path = check.workdir / f"space_{name}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    started = time.perf_counter()
    outcome = run_search(load_space(path), verbose=0, out=io.StringIO())
    seconds = time.perf_counter() - started
    last = [result.metrics for result in outcome.results if result.metrics]
    pids = [attempt["pid"] for trial in last
            for attempt in read_attempts(Path(outcome.experiment_path) / f"trial_{trial['trial_id']}")]
    epochs = [int(trial["epoch"]) for trial in last]
    return _SearchRun(trials=last, pids=pids, asked=trials, concurrent=concurrent, resources=resources,
                      epochs=sum(epochs), stopped=sum(e < s.search_epochs for e in epochs), seconds=seconds)


class GpuMemoryWatch:
    """The largest GPU memory (MiB) ``nvidia-smi`` reports for each process id, sampled twice a second."""

    def __init__(self) -> None:
        self.peak_mib: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        if shutil.which("nvidia-smi"):
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            answer = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                    capture_output=True, text=True, check=False).stdout
            for line in answer.splitlines():
                pid, _, used = line.partition(",")
                if pid.strip().isdigit() and used.strip().replace(".", "", 1).isdigit():
                    self.peak_mib[int(pid)] = max(self.peak_mib.get(int(pid), 0.0), float(used))


