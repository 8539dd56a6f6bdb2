"""``python -m motorsearch simulate``: write a synthetic dataset in the Kaggle layout."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="write a synthetic cryo-ET dataset in the exact Kaggle layout",
        description="Write simulated tomograms (JPEG slices, train_labels.csv, sample_submission.csv) "
                    "plus test_solution.csv to --out. Deterministic in --seed.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist, or be empty)")
    parser.add_argument("--n-train", type=int, default=24, metavar="N", help="train tomograms (default 24)")
    parser.add_argument("--n-test", type=int, default=8, metavar="M", help="test tomograms (default 8)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--difficulty", type=float, default=1.0, metavar="D",
                        help="0 trivial, 1 default (learnable on a CPU), 2-3 hard (default 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import time
    from pathlib import Path

    from motorsearch.data.simulate import simulate_dataset
    from motorsearch.errors import ConfigError

    if args.n_train < 1:
        raise ConfigError(f"`--n-train` must be at least 1 (an empty train split trains nothing), but got "
                          f"--n-train={args.n_train}.")
    if args.n_test < 0:
        raise ConfigError(f"`--n-test` cannot be negative, but got --n-test={args.n_test}.")
    start = time.perf_counter()
    out = simulate_dataset(Path(args.out), n_train=args.n_train, n_test=args.n_test, seed=args.seed,
                           difficulty=args.difficulty)
    elapsed = time.perf_counter() - start
    for name in ("train_labels.csv", "test_solution.csv"):
        with open(out / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        tomograms = {row["tomo_id"] for row in rows}
        motors = sum(row["Motor axis 0"] != "-1" for row in rows)
        spacings = [float(row["Voxel spacing"]) for row in rows]
        split = "train" if name.startswith("train") else "test"
        print(f"{split}: {len(tomograms)} tomograms, {motors} motors, voxel spacing "
              f"{min(spacings, default=0):g}-{max(spacings, default=0):g} Å  ({out / split})")
    print(f"wrote {out} in {elapsed:.1f} s: train_labels.csv, sample_submission.csv, test_solution.csv")
    return 0
