"""``python -m motorsearch train EXPERIMENT.yaml --out MODEL.pt``: one training run, no Ray.

Prepares the data cache if needed, trains with a progress bar, prints each validation epoch's
metrics, and copies the best epoch's model file to ``--out`` (plus ``--out``.sha256).
Checkpoints go to ``--workdir`` (default ``<out without suffix>.work/`` beside ``--out``);
``--resume <workdir>/checkpoints/epoch_NNNN`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from motorsearch.cli import add_overrides

SHOWN_METRICS = ("train_loss", "val_loss", "val_f2", "val_precision", "val_recall", "val_threshold", "val_dice",
                 "val_topk_acc", "lr", "epoch_time_s")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train one model from an experiment YAML and write its model file",
        description="Train one model (no Ray) from an experiment YAML; writes the best epoch's self-contained "
                    "model file to --out.",
    )
    parser.add_argument("experiment", metavar="EXPERIMENT.yaml", help="experiment config")
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="where to write the best model file")
    parser.add_argument("--workdir", metavar="DIR", help="checkpoint folder (default: <out>.work beside --out)")
    parser.add_argument("--resume", metavar="CKPT_DIR", help="continue from <workdir>/checkpoints/epoch_NNNN")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (overrides the config's device)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    add_overrides(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from motorsearch.config import load_experiment
    from motorsearch.errors import ConfigError
    from motorsearch.registry import check_registered

    cfg = load_experiment(args.experiment, args.overrides)
    check_registered(cfg, source=str(args.experiment))  # before the data cache is prepared
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"`--out` must be a file path, but got the folder --out={out}.")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"`--threads` must be at least 1, but got --threads={args.threads}.")
    workdir = Path(args.workdir) if args.workdir else out.with_name(f"{out.stem}.work")
    resume = Path(args.resume) if args.resume else None

    import torch

    from motorsearch.data.cache import prepare
    from motorsearch.model_file import install_model_file
    from motorsearch.training.checkpoint import MODEL_FILE
    from motorsearch.training.trainer import fit

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cache = prepare(cfg.data, progress=True)
    print(f"data: {len(cache.train_tomograms(cfg.data.fold))} training and "
          f"{len(cache.val_tomograms(cfg.data.fold))} validation tomograms (fold {cfg.data.fold} of "
          f"{cfg.data.n_folds}); cache {cache.root}", flush=True)

    def report(epoch: int, metrics: dict[str, float], checkpoint: Path) -> None:
        shown = "  ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN_METRICS if k in metrics)
        print(f"epoch {epoch}/{cfg.optim.epochs}  {shown}", flush=True)

    result = fit(cfg, workdir=workdir, report=report, resume_from=resume, cache=cache, device=args.device,
                 progress=True)
    install_model_file((result.best_checkpoint or result.last_checkpoint) / MODEL_FILE, out)
    best = result.best_metrics
    minutes = (time.perf_counter() - started) / 60
    print(f"best epoch {result.best_epoch}: val_f2={best.get('val_f2', float('nan')):.4f} "
          f"threshold={best.get('val_threshold', float('nan')):.4g}  ({minutes:.1f} min)")
    print(f"model: {out} (checkpoints in {workdir / 'checkpoints'})")
    return 0
