"""``fit``: one training run of an ExperimentConfig, with validation, checkpoints and resume.

The loop knows nothing of Ray or MLflow: after each validation epoch it writes a checkpoint
folder and calls ``report(epoch, metrics, checkpoint_dir)``; a search wraps that callable.

Per epoch (1-based ``epoch``): ``patches_per_epoch // batch_size`` micro-batches from
``PatchDataset`` (set to ``epoch``); every ``optim.batches_per_step`` of them make one optimizer
step (a shorter group at the end of an epoch makes a step of its own). Each micro-batch loss is
divided by the size of its group before ``backward``, so a step's gradient is the mean over the
group, as for one batch that many times larger. Gradients are unscaled (fp16) and clipped once,
just before ``optimizer.step``. The learning rate follows ``schedule.lr_factor`` per optimizer
step. Validation runs every ``validation.every`` epochs and always on the last one.

Metrics reported each validation epoch (floats; the names are ``objective.REPORTED_METRICS``): ``epoch``, ``train_loss`` (mean micro-batch
loss of the epoch), ``lr`` (the head's learning rate at the epoch's end), ``val_f2``,
``val_precision``, ``val_recall``, ``val_threshold``, ``val_loss``, ``val_dice``,
``val_topk_acc``, ``val_ap``, ``val_ap_r90``, ``val_positive_rate`` (see ``evaluation.validate``),
``epoch_time_s``. ``val_threshold`` is
``THRESHOLD_STAND_IN`` (1.0) when predicting no motor at all scores best (the true threshold is
then infinite; the model file keeps ``inf``), so every metric stays finite for trackers.

Reproducibility: everything random is seeded from ``optim.seed``; patches are a pure function
of (seed, epoch, index); checkpoints hold every RNG state. On the CPU a run resumed from the
checkpoint of epoch k ends with the same weights as the uninterrupted run.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from motorsearch.atomic import copy_folder
from motorsearch.config import ExperimentConfig, from_dict
from motorsearch.errors import DataError, TrainingDiverged
from motorsearch.evaluation.pictures import VALIDATION_PICTURE
from motorsearch.objective import Objective, is_better
from motorsearch.training.checkpoint import (
    MODEL_FILE,
    checkpoint_name,
    read_checkpoint,
    restore_rng_state,
    rng_state,
    write_checkpoint,
)
from motorsearch.training.device import (
    autocast_dtype,
    cap_gpu_memory,
    configure_cuda,
    out_of_memory_advice,
    release_gpu_memory,
    select_device,
    select_precision,
)
from motorsearch.training.schedule import WarmupCosineSchedule

if TYPE_CHECKING:
    from motorsearch.data.cache import TomogramCache

ReportFn = Callable[[int, dict[str, float], Path], None]  # (epoch, metrics, checkpoint_dir)
THRESHOLD_STAND_IN = 1.0
CHECKPOINTS = "checkpoints"


@dataclass
class FitResult:
    """What ``fit`` leaves behind: the best epoch's metrics and the checkpoint folders kept on disk."""

    best_metrics: dict[str, float]
    best_epoch: int
    best_checkpoint: Path | None
    last_checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    train_ids: list[str] = field(default_factory=list)  # the tomograms it trained on


def steps_per_epoch(cfg: ExperimentConfig) -> tuple[int, int]:
    """(micro-batches, optimizer steps) per epoch."""
    micro = cfg.sampling.patches_per_epoch // cfg.sampling.batch_size
    return micro, math.ceil(micro / cfg.optim.batches_per_step)


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW with two groups: head (and neck) at ``optim.lr``, backbone at ``lr * backbone_lr_ratio``."""
    o = cfg.optim
    return torch.optim.AdamW([
        {"params": model.head_parameters(), "lr": o.lr, "name": "head"},
        {"params": model.backbone_parameters(), "lr": o.lr * o.backbone_lr_ratio, "name": "backbone"},
    ], lr=o.lr, weight_decay=o.weight_decay)


def backward_micro_batch(loss: torch.Tensor, scaler: torch.amp.GradScaler, group_size: int) -> None:
    """Accumulate the gradient of one micro-batch: ``(loss / group_size)``, scaled for fp16."""
    scaler.scale(loss / group_size).backward()


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   *, grad_clip: float | None) -> torch.Tensor | None:
    """One optimizer step on the accumulated gradients: unscale, clip once, step, update the scale, zero.

    Returns the total gradient norm before clipping as a 0-d tensor on the gradients' device (None
    without clipping); it is not read here, so a GPU step does not wait for it.
    """
    norm = None
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict[str, Any]) -> None:
    """Load a checkpoint's GradScaler state, across precisions.

    A disabled scaler (fp32, bf16, CPU) saves ``{}``: resuming such a checkpoint in fp16 starts the
    scaler afresh (loading ``{}`` into an enabled scaler raises); an fp16 state resumed in another
    precision is ignored, as a disabled scaler ignores everything.
    """
    if saved and scaler.is_enabled():
        scaler.load_state_dict(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(
    cfg: ExperimentConfig,
    *,
    workdir: Path,
    report: ReportFn | None = None,
    resume_from: Path | None = None,
    cache: TomogramCache | None = None,
    device: str | None = None,
    progress: bool = False,
    metric: str = "val_f2",
    mode: str = "max",
    gpu_fraction: float | None = None,
    train_on_all: bool = False,
) -> FitResult:
    """Train ``cfg`` and return the best and last checkpoints; see the module docstring.

    Args:
        workdir: receives ``checkpoints/epoch_NNNN/`` (only the last and the best are kept).
        report: called after each validation epoch with (epoch, metrics, checkpoint folder).
        resume_from: a checkpoint folder of an earlier run of the same config; training
            continues with the next epoch.
        cache: the prepared data; ``prepare(cfg.data)`` when None.
        device: overrides ``cfg.device`` ("auto", "cpu", "cuda", "cuda:N").
        progress: show a tqdm bar over each epoch's micro-batches.
        metric, mode: which metric picks the best checkpoint, and whether larger ("max") or
            smaller ("min") is better.
        gpu_fraction: the share of the card this run may use (a trial's ``resources.gpu`` below
            1): its memory is capped there (``device.cap_gpu_memory``).
        train_on_all: train on every labelled tomogram, ``data.fold`` included (a refit); the
            validation then scores tomograms the model has seen, a check that it trained, not
            an estimate of how it generalises.

    Raises TrainingDiverged when a loss is NaN or infinite, and ``torch.cuda.OutOfMemoryError``
    with what to lower. However it ends, the model, optimizer and activations are unreachable
    when the exception leaves ``fit`` and the GPU's cached memory has been given back: Ray stops
    a pruned trial by raising inside ``report``, and its process may train the next trial.
    """
    try:
        return _fit(cfg, workdir=workdir, report=report, resume_from=resume_from, cache=cache, device=device,
                    progress=progress, metric=metric, mode=mode, gpu_fraction=gpu_fraction,
                    train_on_all=train_on_all)
    except BaseException as exc:
        # the traceback holds _fit's finished frames and with them every tensor; clear them first
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        release_gpu_memory()


def _fit(cfg: ExperimentConfig, *, workdir: Path, report: ReportFn | None, resume_from: Path | None,
         cache: TomogramCache | None, device: str | None, progress: bool, metric: str, mode: str,
         gpu_fraction: float | None, train_on_all: bool) -> FitResult:
    from motorsearch.data.sampler import PatchDataset
    from motorsearch.evaluation.validate import validate
    from motorsearch.losses import build_loss
    from motorsearch.model import build_model

    Objective(metric, mode)  # checks both (ConfigError)
    workdir = Path(workdir)
    torch_device = select_device(device if device is not None else cfg.device)
    precision = select_precision(cfg.optim.precision, torch_device)
    amp_dtype = autocast_dtype(precision)
    configure_cuda(torch_device)
    capped = cap_gpu_memory(gpu_fraction or 1.0, torch_device)

    if cache is None:
        from motorsearch.data.cache import prepare

        cache = prepare(cfg.data, progress=progress)
    train_tomograms = cache.labelled() if train_on_all else cache.train_tomograms(cfg.data.fold)
    val_tomograms = cache.val_tomograms(cfg.data.fold)
    if not train_tomograms or not val_tomograms:
        raise DataError(f"fold {cfg.data.fold} of {cfg.data.n_folds} leaves {len(train_tomograms)} training and "
                        f"{len(val_tomograms)} validation tomograms; both must be non-empty (fewer folds, "
                        "data.n_folds, or more data).")

    seed_everything(cfg.optim.seed)
    model = build_model(cfg.model).to(torch_device)
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(model, cfg)
    micro_per_epoch, optimizer_steps = steps_per_epoch(cfg)
    schedule = WarmupCosineSchedule(optimizer, total_steps=optimizer_steps * cfg.optim.epochs,
                                    warmup_fraction=cfg.optim.warmup_fraction,
                                    min_lr_fraction=cfg.optim.min_lr_fraction)
    scaler = torch.amp.GradScaler(torch_device.type, enabled=precision == "fp16")
    dataset = PatchDataset(train_tomograms, sampling=cfg.sampling, augment=cfg.augment, target=cfg.target,
                           stride=cfg.model.stride, normalization=cfg.data.normalization, seed=cfg.optim.seed)
    loader = DataLoader(dataset, batch_size=cfg.sampling.batch_size, shuffle=False, drop_last=True,
                        num_workers=cfg.sampling.num_workers, pin_memory=torch_device.type == "cuda",
                        persistent_workers=False)

    tracker = _BestTracker(metric, mode)
    history: list[dict[str, float]] = []
    first_epoch, global_step = 1, 0
    if resume_from is not None:
        state = read_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the current config rules (a search may have changed it)
            group["weight_decay"] = cfg.optim.weight_decay
        schedule.load_state_dict(state["schedule"])
        restore_scaler(scaler, state["scaler"])
        first_epoch, global_step = int(state["epoch"]) + 1, int(state["global_step"])
        history = [dict(h) for h in state["history"]]
        tracker.load(state["best"], search=[workdir / CHECKPOINTS, Path(resume_from).parent],
                     into=workdir / CHECKPOINTS)
        restore_rng_state(state["rng"], torch_device)
        del state  # the checkpoint's tensors

    checkpoints = workdir / CHECKPOINTS
    last_dir: Path | None = None
    step = _Stepper(model, optimizer, schedule, scaler, loss_fn, cfg, torch_device, amp_dtype)
    step.global_step = global_step
    for epoch in range(first_epoch, cfg.optim.epochs + 1):
        started = time.perf_counter()
        dataset.set_epoch(epoch)
        batches: Any = loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(loader, total=micro_per_epoch, desc=f"epoch {epoch}/{cfg.optim.epochs}", unit="batch",
                           leave=False)
        with _advice_on_out_of_memory("training", cfg, precision, capped):
            losses = step.epoch(batches, epoch=epoch, micro_batches=micro_per_epoch)

        is_last = epoch == cfg.optim.epochs
        if not (is_last or epoch % cfg.validation.every == 0):
            continue
        with _advice_on_out_of_memory("validation", cfg, precision, capped):
            result = validate(model, val_tomograms, cfg=cfg, device=torch_device, loss_fn=loss_fn)
        metrics = {
            "epoch": float(epoch),
            "train_loss": float(np.mean(losses)),
            "lr": float(optimizer.param_groups[0]["lr"]),
            **{k: float(v) for k, v in result.metrics.items()},
        }
        if not math.isfinite(metrics["val_threshold"]):
            metrics["val_threshold"] = THRESHOLD_STAND_IN
        metrics["epoch_time_s"] = time.perf_counter() - started
        history.append(metrics)
        improved = tracker.offer(metrics, epoch)
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "global_step": step.global_step, "history": history,
            "best": tracker.state(), "rng": rng_state(torch_device), "config": cfg.to_dict(),
        }
        folder = checkpoints / checkpoint_name(epoch)

        def write_files(path: Path, r: Any = result, m: dict[str, float] = metrics, best: bool = improved) -> None:
            _write_model(path, model, cfg, r, m)
            if best:  # the validation picture of each new best epoch, from the heatmaps just computed
                _write_picture(path.parent / VALIDATION_PICTURE, val_tomograms, r, cfg)

        write_checkpoint(folder, state, write_files)
        last_dir = folder
        if improved:
            tracker.folder = folder
        if report is not None:
            report(epoch, dict(metrics), folder)
        _prune(checkpoints, keep={folder, tracker.folder})

    if last_dir is None:  # resumed from the last epoch: nothing left to train
        last_dir = Path(resume_from)
    return FitResult(best_metrics=dict(tracker.metrics or {}), best_epoch=tracker.epoch,
                     best_checkpoint=tracker.folder, last_checkpoint=last_dir, history=history,
                     train_ids=[t.tomo_id for t in train_tomograms])


class _Stepper:
    """One epoch of optimizer steps: micro-batches, accumulation, clipping, schedule, divergence check."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: WarmupCosineSchedule,
                 scaler: torch.amp.GradScaler, loss_fn: torch.nn.Module, cfg: ExperimentConfig,
                 device: torch.device, amp_dtype: torch.dtype | None):
        self.model, self.optimizer, self.schedule, self.scaler = model, optimizer, schedule, scaler
        self.loss_fn, self.device, self.amp_dtype = loss_fn, device, amp_dtype
        self.per_step, self.grad_clip = cfg.optim.batches_per_step, cfg.optim.grad_clip
        self.global_step = 0

    def epoch(self, batches: Any, *, epoch: int, micro_batches: int) -> list[float]:
        """Train on ``batches`` of (images (B, 1, D, H, W), targets (B, 1, d, h, w)); returns the micro-batch losses."""
        self.model.train()
        losses: list[float] = []
        for index, (images, targets) in enumerate(batches):
            group_start = index - index % self.per_step
            group_size = min(self.per_step, micro_batches - group_start)
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                logits = self.model(images)
            loss = self.loss_fn(logits.float(), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged at epoch {epoch} step {self.global_step + 1}: loss={value}")
            losses.append(value)
            backward_micro_batch(loss, self.scaler, group_size)
            if index + 1 == group_start + group_size:
                optimizer_step(self.model, self.optimizer, self.scaler, grad_clip=self.grad_clip)
                self.schedule.step()
                self.global_step += 1
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{value:.4f}", refresh=False)
        return losses


@contextmanager
def _advice_on_out_of_memory(phase: str, cfg: ExperimentConfig, precision: str,
                             fraction: float | None) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        advice = out_of_memory_advice(phase=phase, batch_size=cfg.sampling.batch_size, precision=precision,
                                      window_batch_size=cfg.validation.window_batch_size, fraction=fraction)
        raise torch.cuda.OutOfMemoryError(f"{advice} ({str(exc).splitlines()[0]})") from None


def load_config_from_checkpoint(folder: str | Path) -> ExperimentConfig:
    """The experiment config a checkpoint was written with."""
    return from_dict(read_checkpoint(folder)["config"], source=f"{folder}/state.pt")


def _write_model(path: Path, model: torch.nn.Module, cfg: ExperimentConfig, result: Any,
                 metrics: dict[str, float]) -> None:
    from motorsearch.model_file import save_model_file

    save_model_file(path, model=model, cfg=cfg, threshold=result.threshold, metrics=metrics,
                    extra={"epoch": int(metrics["epoch"])}, quantile=metrics["val_positive_rate"] or None)


def _write_picture(path: Path, tomograms: Any, result: Any, cfg: ExperimentConfig) -> None:
    from motorsearch.evaluation.pictures import validation_png

    validation_png(tomograms, result.heatmaps, path, threshold=result.threshold, stride=cfg.model.stride,
                   nms_radius_a=cfg.validation.nms_radius_a, normalization=cfg.data.normalization)


def _prune(checkpoints: Path, *, keep: set[Path | None]) -> None:
    """Delete every finished checkpoint folder except those in ``keep``."""
    kept = {p.resolve() for p in keep if p is not None}
    for folder in checkpoints.glob("epoch_*"):
        if folder.is_dir() and folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)


class _BestTracker:
    """The best epoch so far by one metric, by :func:`motorsearch.objective.is_better`."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.value: float | None = None
        self.epoch = 0
        self.metrics: dict[str, float] | None = None
        self.folder: Path | None = None

    def offer(self, metrics: dict[str, float], epoch: int) -> bool:
        if self.metric not in metrics:
            raise KeyError(f"`metric` {self.metric!r} is not among the metrics: {', '.join(sorted(metrics))}.")
        value = float(metrics[self.metric])
        better = is_better(value, self.value, self.mode)
        if better:
            self.value, self.epoch, self.metrics = value, epoch, dict(metrics)
        return better

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "epoch": self.epoch,
                "metrics": dict(self.metrics or {})}

    def load(self, state: dict[str, Any], *, search: list[Path], into: Path) -> None:
        """Take the best-so-far from a checkpoint; its folder is looked for in ``search`` and copied ``into``."""
        if state["metric"] != self.metric or state["mode"] != self.mode:
            return  # a different criterion: start tracking afresh
        self.value, self.epoch = state["value"], int(state["epoch"])
        self.metrics = dict(state["metrics"]) or None
        name = checkpoint_name(self.epoch)
        for place in search:
            folder = place / name
            if (folder / MODEL_FILE).is_file():
                if folder.resolve() != (into / name).resolve():
                    copy_folder(folder, into / name)
                self.folder = into / name
                return
