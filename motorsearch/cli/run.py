"""``python -m motorsearch run SPACE.yaml``: a hyperparameter search on Ray Tune + Optuna.

Flags replace the space file's values; ``--set`` overrides the base experiment (as in ``train``).

A refused search writes nothing: everything that can be checked (the space, the name or what to
resume, warm-start points, the tracking URI, the data, the resources) is checked before Ray starts
and before the first MLflow, Optuna or storage write. After Ctrl-C the command exits 130.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from motorsearch.cli import add_overrides

OPTUNA_DASHBOARD = "http://127.0.0.1:8080"  # where optuna-dashboard serves by default

if TYPE_CHECKING:
    from motorsearch.search.runner import SearchOutcome
    from motorsearch.search.space import SearchSpace
    from motorsearch.tracking.search_runs import SearchRun


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a hyperparameter search described by a search-space YAML",
        description="Search hyperparameters with Ray Tune (trials across CPUs/GPUs/nodes), Optuna (TPE, random, "
                    "CMA-ES) and ASHA early stopping. Prints the Ray dashboard URL, Tune's live table, and at the "
                    "end a leaderboard and the best checkpoint's model file.",
    )
    parser.add_argument("space", metavar="SPACE.yaml", help="search-space file, e.g. search_spaces/demo.yaml")
    parser.add_argument("--address", metavar="auto|HOST:PORT",
                        help="join an existing Ray cluster (default: the space file's `address`, else a local Ray)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted search of the same name; finished trials are not redone")
    parser.add_argument("--name", help="search name (folder under the storage path); default: the space file's")
    parser.add_argument("--num-samples", type=int, metavar="N", help="number of trials")
    parser.add_argument("--budget-epochs", type=int, metavar="E",
                        help="stop the search once its trials have trained E epochs in all (trial-epochs)")
    parser.add_argument("--storage-path", metavar="PATH", help="where results go (default ./runs); a URI for clusters")
    parser.add_argument("--storage-shared", action="store_true", default=None,
                        help="declare that the storage path is one filesystem every node sees (e.g. NFS)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: the space file's, else $MLFLOW_TRACKING_URI, "
                             "else sqlite:///mlflow.db in the current directory)")
    parser.add_argument("--warm-start", metavar="EXPERIMENT",
                        help="first try the best configurations of an earlier search (its MLflow experiment name)")
    parser.add_argument("--warm-start-top", type=int, default=3, metavar="K",
                        help="how many configurations --warm-start takes (default 3)")
    parser.add_argument("--top", type=int, default=10, metavar="K", help="leaderboard rows to print (default 10)")
    add_overrides(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from motorsearch.errors import ConfigError
    from motorsearch.search.runner import format_leaderboard
    from motorsearch.search.space_file import load_space
    from motorsearch.tracking import schema

    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"`--num-samples` must be at least 1, but got --num-samples={args.num_samples}.")
    if args.budget_epochs is not None and args.budget_epochs < 1:
        raise ConfigError(f"`--budget-epochs` must be at least 1, but got --budget-epochs={args.budget_epochs}.")
    if args.warm_start_top < 1:
        raise ConfigError(f"`--warm-start-top` must be at least 1, but got --warm-start-top={args.warm_start_top}.")
    space = load_space(args.space, overrides=args.overrides, name=args.name, num_samples=args.num_samples,
                       storage_path=args.storage_path, address=args.address, storage_shared=args.storage_shared,
                       tracking_uri=args.tracking_uri, budget_epochs=args.budget_epochs)
    warm = None
    if args.warm_start:
        from motorsearch.tracking.leaderboard import top_configs

        warm = top_configs(args.warm_start, args.warm_start_top, space.tracking_uri)
        print(f"warm start: {len(warm)} configuration(s) from MLflow experiment {args.warm_start!r}")
    outcome, search = tracked_search(space, space_file=args.space, points_to_evaluate=warm, resume=args.resume,
                                     tracking_origin=tracking_origin(args))
    print()
    print(f"leaderboard ({space.objective.value_key}, {space.mode}; finished trials first) of "
          f"{len(outcome.leaderboard)} trials:")
    print(format_leaderboard(outcome.leaderboard, metric=space.objective.value_key, top=args.top))
    if outcome.budget_spent:
        print(f"the epoch budget is spent: {outcome.spent_epochs} trial-epochs (budget {space.budget_epochs}) "
              f"over {len(outcome.leaderboard)} trials")
    print(f"results: {outcome.experiment_path}")
    print(dashboards_message(space, outcome, search))
    if not outcome.complete:
        print(f"the search was interrupted; continue it with: python -m motorsearch run {args.space} --resume"
              + (f" --name {space.name}" if args.name else "")
              + (f" --storage-path {args.storage_path}" if args.storage_path else ""))
    errors = [row for row in outcome.leaderboard if row.status == schema.ERRORED]
    if errors:
        print(f"{len(errors)} trial(s) failed; their errors are in <trial folder>/error.txt, e.g. {errors[0].path}")
    if space.confirm is not None and outcome.complete and outcome.best is not None:
        confirm_phase(space, search)
    if not outcome.complete:
        return 130  # as after Ctrl-C anywhere else: the search did not end
    return 0 if outcome.best is not None else 1


def confirm_phase(space: SearchSpace, search: SearchRun) -> None:
    """The space file's ``confirm:`` phase: the search's top trials trained again on the other folds."""
    from motorsearch.search.confirm import describe_confirmation, plan_confirmation, run_confirmation
    from motorsearch.tracking.leaderboard import finished_trials, get_run, leaderboard, tracking_client

    client = tracking_client(search.tracking_uri)
    parent = get_run(client, search.run_id)
    finished = len(finished_trials(leaderboard(client, parent), search.objective))
    top_k = min(space.confirm.top_k, finished)
    if top_k < space.confirm.top_k:
        print(f"confirm: only {finished} trial(s) finished; confirming those (confirm.top_k={space.confirm.top_k})")
    print()
    plan = plan_confirmation(client, parent, top_k=top_k, folds=space.confirm.fold_list,
                             resources=space.resources.as_ray(), max_concurrent=space.max_concurrent,
                             max_failures=space.max_failures, storage_path=space.storage_path, address=space.address)
    table = run_confirmation(plan)
    print()
    print(describe_confirmation(table, plan.objective))
    print(f"best and export now rank by the confirmed mean (python -m motorsearch best --experiment {space.name})")


def tracking_origin(args: argparse.Namespace) -> str:
    """Where the tracking URI of ``run`` comes from when one is given, for error messages."""
    return "--tracking-uri" if args.tracking_uri else f"`tracking_uri` in {args.space}"


def dashboards_message(space: SearchSpace, outcome: SearchOutcome, search: SearchRun) -> str:
    """Where to look at a search that ended: each command as it works from the current directory."""
    from motorsearch.search.cluster import env_command

    lines = [f"mlflow: experiment {space.name!r}, search run {search.run_id}, tracking URI {search.tracking_uri}"]
    if search.ui_command:
        lines.append(f"  serve it:   {search.ui_command}")
    lines += [f"  runs table: {search.runs_url}",
              f"  or in the terminal: python -m motorsearch best --experiment {space.name}"]
    dashboard = env_command("optuna-dashboard")
    lines.append(f"optuna study: {dashboard} {outcome.study_storage}   (then open {OPTUNA_DASHBOARD})")
    if shutil.which(dashboard) is None:
        lines.append("  optuna-dashboard is not installed: pip install the extra motorsearch[dashboards] (the "
                     "checkout's Makefile installs it with everything else)")
    cluster = outcome.cluster
    if cluster is not None and cluster.started_here:
        lines.append("Ray dashboard: closed with the search's local Ray; `make ray-start` keeps one open for the "
                     "searches you run with --address auto")
    elif cluster is not None and cluster.dashboard_url:
        lines.append(f"Ray dashboard: {cluster.dashboard_url} (the cluster keeps running)")
    return "\n".join(lines)


def search_settings(space: SearchSpace, space_file: str | Path) -> dict[str, Any]:
    """How a search runs, as the parameters of its MLflow parent run."""
    scheduler = space.scheduler
    if scheduler.type == "asha":
        described = (f"asha(grace_period={scheduler.grace_period}, "
                     f"reduction_factor={scheduler.reduction_factor:g})")
    else:
        described = scheduler.type
    return {"space_file": Path(space_file).name, "sampler": space.searcher.sampler, "seed": space.searcher.seed,
            "n_startup_trials": space.searcher.n_startup_trials, "scheduler": described,
            "max_epochs": space.max_epochs, "num_samples": space.num_samples, "budget_epochs": space.budget_epochs,
            "max_concurrent": space.max_concurrent, "resources": space.resources.as_ray()}


def tracked_search(space: SearchSpace, *, space_file: str | Path, points_to_evaluate: list[dict] | None = None,
                   resume: bool = False, out: Any = None, tracking_origin: str | None = None,
                   trainable: Callable[..., None] | None = None) -> tuple[SearchOutcome, SearchRun]:
    """Run the search ``space`` with its MLflow parent run, a child run per trial and the Optuna
    study linked to them: what ``run`` does before it prints. Refusals come first, in the order they
    cost (see the module docstring); the parent run opens only once the search is sure to start.
    ``trainable``: what each trial runs (see :func:`run_search`; None: real training)."""
    from motorsearch.search.runner import check_search, prepare_search, run_search
    from motorsearch.search.study import study_url
    from motorsearch.tracking import schema
    from motorsearch.tracking.search_runs import SearchRun

    check_search(space, resume=resume, points_to_evaluate=points_to_evaluate)
    SearchRun.check_tracking(space.tracking_uri, origin=tracking_origin)  # seconds, not after the data caches
    cluster = prepare_search(space, out=out)
    with SearchRun.start(name=space.name, objective=space.objective, space_file=space_file,
                         settings=search_settings(space, space_file),
                         tracking_uri=space.tracking_uri, ray_address=space.address or "local",
                         storage_path=space.storage_path, resume=resume, tracking_origin=tracking_origin) as search:
        search.study_storage, search.study_name = study_url(space), space.name
        # each trial's own optim.epochs (resolved from its config) tells finished from stopped
        callback = search.trial_callback(resolve_config=lambda values: space.trial_config(values).to_dict())
        outcome = run_search(space, callbacks=[callback], points_to_evaluate=points_to_evaluate, resume=resume,
                             out=out, cluster=cluster, trainable=trainable)
        if not outcome.complete:
            search.status = schema.SEARCH_INTERRUPTED
    return outcome, search
