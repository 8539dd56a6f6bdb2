"""Which validation number ranks models the way new tomograms do? Spearman over one real search.

Runs a search of ``--trials`` trials (default 16, every trial trained in full, no early stopping)
on the built-in simulator (the demo experiment, shortened to ``--epochs`` epochs of
``--patches`` patches), varying the learning rate, the loss, the heatmap sigma and the zoom
augmentation, so the trials differ in how well they cope with an unknown voxel spacing. Then,
for each trial's final model:

- its held-out score: competition F2 of ``predict`` on the simulator's 20 test tomograms, NOT
  told their spacing (the model's test-time policy: its training spacing, 16 Å);
- candidate objectives on the validation fold: ``val_f2`` and ``val_ap`` with the spacing known
  (as validation was before 2026-12-01), and under test conditions (``validation.unknown_spacing``),
  each with TTA 1 and 4.

Reports the Spearman rank correlation of each objective with the held-out score, and writes
the per-trial table. ``--out`` gets a markdown report with the machine and the command.

    python -m benchmarks.bench_objective [--trials 16] [--epochs 4] [--patches 32]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.report import machine
from motorsearch.atomic import write_text

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = {  # name -> (validation.unknown_spacing, test_time.tta, metric)
    "val_f2, spacing known": (False, 1, "val_f2"),
    "val_ap, spacing known": (False, 1, "val_ap"),
    "val_f2, spacing unknown": (True, 1, "val_f2"),
    "val_ap, spacing unknown": (True, 1, "val_ap"),
    "val_f2, spacing unknown, TTA 4": (True, 4, "val_f2"),
    "val_ap, spacing unknown, TTA 4": (True, 4, "val_ap"),
}


def write_space(folder: Path, *, trials: int, epochs: int, patches: int, cache: Path) -> Path:
    space = {
        "name": "objective",
        "experiment": str(REPO / "experiments" / "synthetic_demo.yaml"),
        "overrides": {"device": "cpu", "optim.epochs": epochs, "sampling.patches_per_epoch": patches,
                      "validation.every": epochs, "validation.overlap": 0.0, "data.cache_dir": str(cache)},
        "num_samples": trials, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
        "scheduler": {"type": "none"}, "searcher": {"sampler": "random", "seed": 7},
        "storage_path": str(folder / "runs"), "max_failures": 1, "checkpoints_to_keep": 1,
        "parameters": {
            "optim.lr": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
            "loss.name": {"type": "categorical", "choices": ["weighted_bce", "focal"]},
            "target.sigma_a": {"type": "float", "low": 120.0, "high": 320.0},
            "augment.zoom_min": {"type": "categorical", "choices": [0.7, 1.0]},
            "augment.zoom_max": {"type": "categorical", "choices": [1.0, 1.6]},
        },
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def held_out_f2(model: Path, root: Path, submission: Path) -> float:
    from motorsearch.cli import main
    from motorsearch.evaluation.scoring import score_submission_csv

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if main(["predict", "--model", str(model), "--data", str(root / "test"), "--out", str(submission)]) != 0:
            raise SystemExit(f"predict failed for {model}")
    return score_submission_csv(root / "test_solution.csv", submission).f2


def objectives(model: Path, val_tomograms: list) -> dict[str, float]:
    from motorsearch.evaluation.validate import validate
    from motorsearch.model_file import load_model_file

    loaded = load_model_file(model)
    cfg = loaded.experiment_config()
    values = {}
    for name, (unknown, tta, metric) in OBJECTIVES.items():
        variant = dataclasses.replace(cfg, validation=dataclasses.replace(cfg.validation, unknown_spacing=unknown),
                                      test_time=dataclasses.replace(cfg.test_time, tta=tta))
        values[name] = validate(loaded.model, val_tomograms, cfg=variant, device="cpu").metrics[metric]
    return values


def run(*, trials: int, epochs: int, patches: int, cache: Path, workdir: Path) -> tuple[list[dict], dict]:
    from scipy.stats import spearmanr

    from motorsearch.data.cache import prepare
    from motorsearch.data.sources import synthetic_root
    from motorsearch.search.runner import run_search
    from motorsearch.search.space_file import load_space

    space = load_space(write_space(workdir, trials=trials, epochs=epochs, patches=patches, cache=cache))
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_search(space, verbose=0, out=io.StringIO())
    search_s = time.perf_counter() - started
    root = synthetic_root(space.base.data)
    val_tomograms = prepare(space.base.data).val_tomograms(space.base.data.fold)
    rows = []
    for row in outcome.leaderboard:
        if row.checkpoint is None:
            continue
        model = Path(row.checkpoint) / "model.pt"
        entry = {"trial": row.trial_id, **{k: row.params[k] for k in sorted(row.params)},
                 "test_f2_unknown_spacing": held_out_f2(model, root, workdir / f"{row.trial_id}.csv"),
                 **objectives(model, val_tomograms)}
        rows.append(entry)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in entry.items()}, flush=True)
    test = [r["test_f2_unknown_spacing"] for r in rows]
    correlation = {name: float(spearmanr([r[name] for r in rows], test).statistic) for name in OBJECTIVES}
    return rows, {"correlation": correlation, "search_s": search_s, "trials": len(rows)}


def markdown(rows: list[dict], summary: dict, *, command: str) -> str:
    lines = ["# Which validation number predicts the held-out score?", "",
             f"Machine: {machine()}. Search: {summary['trials']} trials in {summary['search_s'] / 60:.0f} min.",
             f"Command: `{command}`.", "",
             "Held-out score: F2 of `predict` on the simulator's 20 test tomograms, not told their spacing. "
             "Validation: the demo's fold 0 (10 tomograms).", "",
             "| objective | Spearman with held-out F2 |", "|---|---|"]
    lines += [f"| {name} | {value:+.2f} |" for name, value in summary["correlation"].items()]
    columns = list(rows[0]) if rows else []
    lines += ["", "Per trial:", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patches", type=int, default=32)
    parser.add_argument("--cache-dir", default=".motorsearch/cache")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "OBJECTIVE_REPORT.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="motorsearch-objective-") as tmp:
        rows, summary = run(trials=args.trials, epochs=args.epochs, patches=args.patches,
                            cache=Path(args.cache_dir).resolve(), workdir=Path(tmp))
    text = markdown(rows, summary, command="python -m benchmarks.bench_objective " + " ".join(sys.argv[1:]))
    write_text(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
