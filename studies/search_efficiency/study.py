"""Does the search pay? Four ways to spend one trial-epoch budget, on the built-in simulator.

    python -m studies.search_efficiency.study                # the committed study (about 60 min, 2 cores)
    python -m studies.search_efficiency.study --budget 480   # the same, ten times the budget (a cluster)

Arms, each run once per seed (``--seeds``), every trial capped at the space's ``max_epochs``:

- ``defaults``: the research code's settings trained alone (weighted BCE with pos_weight 10,
  sigma 200 Å, lr 5e-4, one learning rate for backbone and head); one run of ``max_epochs``.
- ``random``: random search, every trial trained to the end, until the budget is spent.
- ``tpe``: Optuna's TPE, every trial trained to the end.
- ``tpe_asha``: TPE with ASHA stopping poor trials at epochs 1 and 3.

Each search ends when its trials have trained ``--budget`` epochs between them (``budget_epochs``
of the space); the seed drives the sampler and the weight initialisation (``optim.seed``). The
arm's exported model, its best trial at its best epoch, chosen by ``val_f2`` exactly as
``motorsearch export`` ranks (then the earlier epoch), predicts the held-out test tomograms and is
scored with the competition F2 against the simulator's ``test_solution.csv``.

Everything lands in ``--out`` (default: this folder's ``results/``): one CSV of every reported
epoch and one of every arm's outcome, appended as each arm ends, so an interrupted study picks up
at the next unfinished arm. Then ``analysis.py`` writes ``curves.csv``, ``best_f2_vs_budget.png``
and ``REPORT.md``; ``--analyse-only`` redoes just that from the CSVs, and ``--rescore`` scores the
finished arms' kept models on the test split again first (for when the scoring changes).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import shutil
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from motorsearch.atomic import write_text
from motorsearch.tracking import schema
from studies.search_efficiency import analysis

HERE = Path(__file__).resolve().parent
SPACE = HERE / "space.yaml"
ARMS = ("defaults", "random", "tpe", "tpe_asha")
RESEARCH_DEFAULTS = {"loss.name": "weighted_bce", "loss.pos_weight": 10.0, "target.sigma_a": 200.0,
                     "optim.lr": 5e-4, "optim.backbone_lr_ratio": 1.0}
REPORTS_CSV = "reports.csv"
OUTCOMES_CSV = "outcomes.csv"
REPORT_COLUMNS = ("arm", "seed", "trial", "epoch", "val_f2", "reported_at")
OUTCOME_COLUMNS = ("arm", "seed", "budget", "trials", "spent", "best_val_f2", "best_trial", "best_epoch", "test_f2",
                   "test_precision", "test_recall", "wall_s")


def arm_space(arm: str, seed: int, *, budget: int, storage: Path, space_file: Path = SPACE) -> Any:
    """The :class:`SearchSpace` of one arm and seed (see the module docstring)."""
    from motorsearch.search.space import SchedulerSpec, SearcherSpec
    from motorsearch.search.space_file import load_space

    overrides = [f"optim.seed={seed}"]
    if arm == "defaults":
        overrides += [f"{path}={value}" for path, value in RESEARCH_DEFAULTS.items()]
    space = load_space(space_file, overrides=overrides, name=f"{arm}-s{seed}", storage_path=str(storage),
                       budget_epochs=budget)
    sampler = "random" if arm in ("defaults", "random") else "tpe"
    searcher = SearcherSpec(sampler=sampler, seed=seed, n_startup_trials=space.searcher.n_startup_trials)
    scheduler = space.scheduler if arm == "tpe_asha" else SchedulerSpec(type="none", max_epochs=space.max_epochs)
    if arm == "defaults":
        return dataclasses.replace(space, parameters=[], num_samples=1, searcher=searcher, scheduler=scheduler)
    return dataclasses.replace(space, searcher=searcher, scheduler=scheduler)


def run_arm(arm: str, seed: int, *, budget: int, out: Path, space_file: Path = SPACE, log: Any = None) -> tuple[
        list[dict[str, Any]], dict[str, Any]]:
    """Run one arm for one seed; returns its reported epochs and its outcome row."""
    from motorsearch.search.runner import run_search

    log = log or sys.stdout
    storage = out / "runs"
    space = arm_space(arm, seed, budget=budget, storage=storage, space_file=space_file)
    shutil.rmtree(storage / space.name, ignore_errors=True)  # a half-run arm starts over
    started = time.perf_counter()
    with redirect_stdout(io.StringIO()):  # Tune's progress tables: the study prints one line per arm
        outcome = run_search(space, verbose=0, out=io.StringIO())
    wall = time.perf_counter() - started
    reports = trial_reports(outcome.results, arm=arm, seed=seed)
    best = exported_trial(outcome.leaderboard)
    model, epoch = kept_model(Path(best.path))
    test = test_score(model, space.base.data, out / "submissions" / f"{space.name}.csv")
    spent = analysis.spent_epochs(reports)
    row = {"arm": arm, "seed": seed, "budget": budget, "trials": len({r["trial"] for r in reports}), "spent": spent,
           "best_val_f2": best.value, "best_trial": best.trial_id, "best_epoch": epoch,
           "test_f2": test.f2, "test_precision": test.precision, "test_recall": test.recall, "wall_s": round(wall, 1)}
    print(f"{arm:>9} seed {seed}: {row['trials']} trials, {spent} trial-epochs, best val_f2 {best.value:.3f} "
          f"(trial {best.trial_id}, epoch {row['best_epoch']}), test F2 {test.f2:.3f}, {wall:.0f} s", file=log, flush=True)
    return reports, row


def trial_reports(results: Any, *, arm: str, seed: int, key: str = "val_f2") -> list[dict[str, Any]]:
    """One row per reported epoch of every trial of a finished search (Tune's ResultGrid): its ``key``."""
    rows = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or key not in frame:
            continue
        trial = Path(str(result.path)).name.removeprefix("trial_")
        for _, line in frame.iterrows():
            if math.isnan(float(line[key])):
                continue
            rows.append({"arm": arm, "seed": seed, "trial": trial, "epoch": int(line["epoch"]),
                         key: float(line[key]), "reported_at": float(line["reported_at"])})
    rows.sort(key=lambda r: r["reported_at"])
    return rows


def exported_trial(leaderboard: list[Any]) -> Any:
    """The trial ``motorsearch export`` would pick (the leaderboard's top finished trial); when the
    budget ended the search before any trial finished, the top trial with a kept checkpoint."""
    ranked = [row for row in leaderboard if row.value is not None and row.checkpoint]
    if not ranked:
        raise RuntimeError("no trial of the search reported a value with a checkpoint")
    return next((row for row in ranked if row.status == schema.FINISHED), ranked[0])


def test_score(model: Path, data: Any, submission: Path, *, spacing_given: bool = True) -> Any:
    """Competition F2 of ``model`` on the simulator's held-out test split (via ``motorsearch predict``).

    The Kaggle test layout gives no voxel spacing. With ``spacing_given`` (the first run),
    ``--labels test_solution.csv`` supplies each tomogram's, as the competition's own metadata
    would; without it (the second run, as the test is posed) the model's test-time policy decides.
    """
    from motorsearch.cli import main as cli
    from motorsearch.data.sources import synthetic_root
    from motorsearch.evaluation.scoring import score_submission_csv

    root = synthetic_root(data)
    solution = root / "test_solution.csv"
    submission.parent.mkdir(parents=True, exist_ok=True)
    with redirect_stdout(io.StringIO()):
        code = cli(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(submission),
                    *(["--labels", str(solution)] if spacing_given else [])])
    if code != 0:
        raise RuntimeError(f"predict failed with exit code {code} for {model}")
    return score_submission_csv(solution, submission)


def kept_model(trial_dir: Path) -> tuple[Path, int]:
    """The model file ``export`` would take from a trial: of the checkpoints Tune kept (the best and
    the latest), the highest ``val_f2``, then the earlier epoch; returned with its epoch."""
    from motorsearch.model_file import load_model_file

    kept = []
    for path in sorted(Path(trial_dir).glob("checkpoint_*/model.pt")):
        metrics = load_model_file(path).metrics
        kept.append((-float(metrics["val_f2"]), int(metrics["epoch"]), path))
    if not kept:
        raise RuntimeError(f"no checkpoint with a model file in {trial_dir}")
    _, epoch, path = min(kept)
    return path, epoch


def rescore(out: Path, *, space_file: Path = SPACE, log: Any = None) -> None:
    """Score every finished arm's exported model on the test split again and rewrite ``outcomes.csv``
    (for when the scoring changes)."""
    rows = analysis.read_csv(out / OUTCOMES_CSV)
    for row in rows:
        name = f"{row['arm']}-s{row['seed']}"
        model, epoch = kept_model(out / "runs" / name / f"trial_{row['best_trial']}")
        space = arm_space(row["arm"], int(row["seed"]), budget=int(row["budget"]), storage=out / "runs",
                          space_file=space_file)
        test = test_score(model, space.base.data, out / "submissions" / f"{name}.csv")
        row.update(best_epoch=epoch, test_f2=test.f2, test_precision=test.precision, test_recall=test.recall)
        print(f"{name}: test F2 {test.f2:.3f} (epoch {epoch})", file=log or sys.stdout)
    write_rows(out / OUTCOMES_CSV, OUTCOME_COLUMNS, rows)


def append_rows(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` to a CSV (made when absent), rewriting it atomically."""
    write_rows(path, columns, (analysis.read_csv(path) if path.is_file() else []) + rows)


def write_rows(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Write a CSV of ``rows`` atomically (temporary name, then renamed)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def run_study(*, budget: int, seeds: list[int], arms: tuple[str, ...], out: Path, space_file: Path = SPACE,
              log: Any = None) -> None:
    """Every arm × seed not yet in ``outcomes.csv``, seed by seed so a partial study is balanced."""
    from motorsearch.search.cluster import connect_ray

    log = log or sys.stdout
    out.mkdir(parents=True, exist_ok=True)
    outcomes = out / OUTCOMES_CSV
    previous = analysis.read_csv(outcomes) if outcomes.is_file() else []
    finished = {(row["arm"], int(row["seed"])) for row in previous}
    budgets = {int(row["budget"]) for row in previous}
    if budgets and budgets != {budget}:
        raise SystemExit(f"{outcomes} holds arms run with budget {sorted(budgets)}, not {budget}: "
                         "give another --out, or the same --budget.")
    connect_ray(None, dashboard=False)
    for seed in seeds:
        for arm in arms:
            if (arm, seed) in finished:
                continue
            reports, row = run_arm(arm, seed, budget=budget, out=out, space_file=space_file, log=log)
            append_rows(out / REPORTS_CSV, REPORT_COLUMNS, reports)
            append_rows(outcomes, OUTCOME_COLUMNS, [row])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studies.search_efficiency.study",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=48, help="trial-epochs per search (default 48)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="arms to run (default all)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--analyse-only", action="store_true", help="only rewrite the curves, plot and report")
    parser.add_argument("--rescore", action="store_true",
                        help="score the finished arms' exported models on the test split again, then analyse")
    args = parser.parse_args(argv)
    if args.budget < 1:
        parser.error(f"--budget must be at least 1, but got --budget={args.budget}")
    if args.rescore:
        rescore(args.out)
    elif not args.analyse_only:
        run_study(budget=args.budget, seeds=args.seeds, arms=tuple(args.arms), out=args.out)
    given = argv if argv is not None else sys.argv[1:]
    shown = [arg for arg in given if arg not in ("--analyse-only", "--rescore")]  # the command that reproduces it
    command = "python -m studies.search_efficiency.study " + " ".join(shown)
    analysis.write_all(args.out, command=command.strip())
    print(f"report: {args.out / analysis.REPORT_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
