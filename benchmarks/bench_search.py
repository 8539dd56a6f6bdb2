"""Search overhead: how much of the trial slots' time goes into training, and how soon trials start.

Runs ``python -m motorsearch run`` as a user would (a subprocess, a fresh local Ray, the data
cache built first) on the built-in data, with no early stopping so every trial runs in full:
``--trials`` trials (default 8) of about ``--trial-seconds`` each (default 60; set through the
number of patches per epoch), ``--concurrent`` at a time (default: CPUs // cpus-per-trial).

Measured from each trial's ``result.json`` (one line per validation epoch):

- in-loop time: the sum of the trainer's ``epoch_time_s`` (training + validation of each epoch);
- trial-slot time: ``concurrent x (last trial end - first trial start)``; a trial ends at its
  last report (``trial_started_at + time_total_s``);
- in-loop fraction = in-loop / trial-slot time (goal >= 95 %): what Ray, Tune, Optuna, process
  start-up, model building, data loading and checkpoint copies cost together;
- per-trial fraction: in-loop time / the trials' own wall time (start-up inside a trial only);
- time to first trial: from starting the command to the first trial entering its trainable
  (the data are simulated and cached before the clock starts: a one-time cost, not overhead).

    python -m benchmarks.bench_search            # 8 trials x ~60 s (about 5 min on 2 cores)
    python -m benchmarks.bench_search --quick    # 4 trials x ~15 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EPOCH_SECONDS_PER_PATCH = 0.6  # rough CPU cost of one 64x96x96 training patch (1 thread); sets the epoch length


def run(quick: bool = False, *, trials: int | None = None, trial_seconds: float | None = None,
        concurrent: int | None = None, cpus_per_trial: int = 1, workdir: str | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; rows ``{metric, value, unit, note}``."""
    trials = trials or (4 if quick else 8)
    trial_seconds = trial_seconds or (15.0 if quick else 60.0)
    concurrent = concurrent or max(1, (os.cpu_count() or 2) // cpus_per_trial)
    folder = Path(workdir or tempfile.mkdtemp(prefix="bench_search_"))
    folder.mkdir(parents=True, exist_ok=True)
    space = _write_space(folder, trials=trials, trial_seconds=trial_seconds, concurrent=concurrent,
                         cpus_per_trial=cpus_per_trial)
    _prepare_data(space)  # simulate + cache the data first: a one-time cost, not search overhead
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    started = time.time()
    process = subprocess.run([sys.executable, "-m", "motorsearch", "run", str(space)], cwd=folder, env=env,
                             capture_output=True, text=True)
    wall = time.time() - started
    if process.returncode != 0:
        raise RuntimeError(f"the search failed (exit {process.returncode}):\n{process.stdout[-3000:]}\n"
                           f"{process.stderr[-3000:]}")
    rows = [json.loads(line) for path in sorted((folder / "runs" / "bench").glob("trial_*/result.json"))
            for line in path.read_text().splitlines() if line.strip()]
    return _summarise(rows, started=started, wall=wall, concurrent=concurrent, trials=trials)


def _summarise(rows: list[dict[str, Any]], *, started: float, wall: float, concurrent: int,
               trials: int) -> list[dict[str, Any]]:
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], []).append(row)
    if len(by_trial) < trials:
        raise RuntimeError(f"expected {trials} trials with results, found {len(by_trial)}")
    in_loop = sum(row["epoch_time_s"] for row in rows)
    starts = {t: min(r["trial_started_at"] for r in rs) for t, rs in by_trial.items()}
    ends = {t: max(r["trial_started_at"] + r["time_total_s"] for r in rs) for t, rs in by_trial.items()}
    span = max(ends.values()) - min(starts.values())
    trial_wall = sum(ends[t] - starts[t] for t in by_trial)
    mean_trial = trial_wall / len(by_trial)
    return [
        {"metric": "in-loop fraction of trial-slot time", "value": round(100 * in_loop / (concurrent * span), 1),
         "unit": "%", "note": f"{len(by_trial)} trials, {concurrent} slots, {span:.0f} s from first start to last end"},
        {"metric": "in-loop fraction of trial wall time", "value": round(100 * in_loop / trial_wall, 1), "unit": "%",
         "note": "start-up inside trials only (imports, model, data, checkpoint copies)"},
        {"metric": "mean trial duration", "value": round(mean_trial, 1), "unit": "s", "note": "trainable start to last report"},
        {"metric": "time to first trial running", "value": round(min(starts.values()) - started, 1), "unit": "s",
         "note": "command start to the first trainable (Python, Ray start, data cache, Tune)"},
        {"metric": "time to first result", "value": round(min(
            r["trial_started_at"] + r["time_total_s"] for r in rows) - started, 1), "unit": "s",
         "note": "command start to the first validation epoch reported"},
        {"metric": "command wall time", "value": round(wall, 1), "unit": "s", "note": "whole `motorsearch run`"},
    ]


def _prepare_data(space: Path) -> None:
    from motorsearch.data.cache import prepare
    from motorsearch.search.space_file import load_space

    prepare(load_space(space).base.data)


def _write_space(folder: Path, *, trials: int, trial_seconds: float, concurrent: int, cpus_per_trial: int) -> Path:
    epochs = 3
    # epoch = validation (~1/3 of a short epoch here) + patches; aim the whole trial at trial_seconds
    patches = max(4, int(2 * round(trial_seconds / epochs / EPOCH_SECONDS_PER_PATCH / 2)))
    space = {
        "name": "bench",
        "experiment": str(REPO / "experiments" / "synthetic_demo.yaml"),
        "overrides": {"device": "cpu", "optim.epochs": epochs, "validation.every": 1, "validation.overlap": 0.0,
                      "sampling.patches_per_epoch": patches, "sampling.num_workers": 0,
                      "data.cache_dir": str(folder / "cache")},
        "num_samples": trials,
        "max_concurrent": concurrent,
        "resources": {"cpu": cpus_per_trial, "gpu": 0},
        "scheduler": {"type": "none"},
        "searcher": {"sampler": "random", "seed": 0},
        "storage_path": str(folder / "runs"),
        "max_failures": 0,
        "parameters": {"optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    }
    path = folder / "bench_space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials of ~15 s")
    parser.add_argument("--trials", type=int)
    parser.add_argument("--trial-seconds", type=float)
    parser.add_argument("--concurrent", type=int)
    parser.add_argument("--cpus-per-trial", type=int, default=1)
    parser.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    rows = run(args.quick, trials=args.trials, trial_seconds=args.trial_seconds, concurrent=args.concurrent,
               cpus_per_trial=args.cpus_per_trial, workdir=args.workdir)
    width = max(len(r["metric"]) for r in rows)
    for row in rows:
        print(f"{row['metric']:<{width}}  {row['value']:>8} {row['unit']:<2}  {row['note']}")


if __name__ == "__main__":
    main()
