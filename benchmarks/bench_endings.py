"""Search endings: do ASHA searches finish with every trial, and what does a process per trial cost?

Runs the demo search (``search_spaces/demo.yaml``: 8 trials, 2 at a time, ASHA) ``--repeats``
times as a user would (``python -m motorsearch run``, a subprocess, a fresh local Ray), each with
its own seed, storage and MLflow database, shortened to ``--patches`` patches per epoch. Each
arm runs with Tune's actor reuse off (the product) and, with ``--compare-reuse``, on (as before
2026-12-01). A search still running after ``--timeout`` seconds counts as hung and is killed.

Per arm: searches, hung searches, trials errored (Optuna FAIL), trials left RUNNING in the study,
searches that printed Ray's "Could not re-use actor", and the mean wall time per search and per
trial (the cost of a new process per trial shows as the difference between the arms).

    python -m benchmarks.bench_endings --repeats 10 --compare-reuse     # about 40 min on 2 cores
    python -m benchmarks.bench_endings --quick                          # 2 searches, reuse off
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.table import format_table, row

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "search_spaces" / "demo.yaml"
REUSE_MARKER = "Could not re-use actor"
# The driver as `python -m motorsearch run`, with the runner's actor-reuse switch set first.
_DRIVER = ("import sys, motorsearch.search.runner as runner; runner.REUSE_ACTORS = {reuse}; "
           "from motorsearch.cli import main; sys.exit(main(sys.argv[1:]))")


def one_search(folder: Path, *, seed: int, reuse: bool, patches: int, timeout_s: float, cache: Path) -> dict:
    """Run one demo search in ``folder`` (the data cache shared in ``cache``); what happened to it and its trials."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    args = ["run", str(DEMO), "--name", f"endings{seed}", "--storage-path", str(folder / "runs"),
            "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--set", f"sampling.patches_per_epoch={patches}", "--set", f"data.cache_dir={cache}"]
    space_seed = folder / "seed.yaml"  # the searcher's seed: a space file that differs only there
    space_seed.write_text(DEMO.read_text().replace("seed: 0,", f"seed: {seed},")
                          .replace("experiment: experiments/", f"experiment: {REPO}/experiments/"))
    args[1] = str(space_seed)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", _DRIVER.format(reuse=reuse), *args], cwd=folder,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, hung = process.communicate(timeout=timeout_s)[0], False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, hung = process.communicate()[0], True
    wall = time.perf_counter() - started
    storage = f"sqlite:///{folder / 'runs' / f'endings{seed}' / 'optuna.db'}"
    states = [t.state for t in optuna.load_study(study_name=f"endings{seed}", storage=storage).trials]
    state = optuna.trial.TrialState
    return {"hung": hung, "wall_s": wall, "trials": len(states), "failed": states.count(state.FAIL),
            "running": states.count(state.RUNNING), "reuse_error": REUSE_MARKER in output}


def run(quick: bool = False, *, repeats: int | None = None, compare_reuse: bool = False, patches: int = 8,
        timeout_s: float = 900.0, workdir: str | None = None) -> list[dict]:
    repeats = repeats or (2 if quick else 10)
    arms = (False, True) if compare_reuse else (False,)
    rows = []
    with tempfile.TemporaryDirectory(prefix="motorsearch-endings-", dir=workdir) as tmp:
        for reuse in arms:
            name = "actor reuse on" if reuse else "actor reuse off (product)"
            outcomes = []
            for seed in range(repeats):
                outcome = one_search(Path(tmp) / f"reuse{int(reuse)}_{seed}", seed=seed, reuse=reuse,
                                     patches=patches, timeout_s=timeout_s, cache=Path(tmp) / "cache")
                print(f"{name}, seed {seed}: {outcome}", flush=True)
                outcomes.append(outcome)
            done = [o for o in outcomes if not o["hung"]]
            trials = sum(o["trials"] for o in done) or 1
            note = f"{name}; demo space, {patches} patches/epoch, {repeats} seeds"
            rows += [
                row(f"{name}: hung searches", sum(o["hung"] for o in outcomes), "searches", note),
                row(f"{name}: errored trials", sum(o["failed"] for o in outcomes), "trials", note),
                row(f"{name}: trials left RUNNING", sum(o["running"] for o in outcomes), "trials", note),
                row(f"{name}: 'Could not re-use actor'", sum(o["reuse_error"] for o in outcomes), "searches", note),
                row(f"{name}: wall per finished search", sum(o["wall_s"] for o in done) / max(1, len(done)), "s", note),
                row(f"{name}: wall per trial", sum(o["wall_s"] for o in done) / trials, "s",
                    "search wall / trials, 2 trials at a time"),
            ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 searches, reuse off")
    parser.add_argument("--repeats", type=int, help="searches per arm (default 10)")
    parser.add_argument("--compare-reuse", action="store_true", help="also run every search with actor reuse on")
    parser.add_argument("--patches", type=int, default=8, help="patches per epoch (the demo trains 16)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a search counts as hung")
    parser.add_argument("--workdir", help="where the searches run (default: a temporary folder)")
    args = parser.parse_args()
    rows = run(args.quick, repeats=args.repeats, compare_reuse=args.compare_reuse, patches=args.patches,
               timeout_s=args.timeout, workdir=args.workdir)
    print(format_table(rows))


if __name__ == "__main__":
    main()
