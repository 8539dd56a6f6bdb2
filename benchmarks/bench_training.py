"""Training and inference benchmark: throughput, whole-tomogram inference time, FLOPs per voxel.

``python -m benchmarks.bench_training [--quick] [--threads N] [--peak-tflops T]`` prints a table;
``run(quick)`` returns its rows (dicts with ``metric``, ``value``, ``unit``, ``note``) for the
combined report.

- FLOPs per voxel: forward multiply-adds x 2 of each preset (``MotorIdentifier.flops_per_voxel``);
  a training step costs about 3x (forward + backward).
- Training throughput: input voxels per second through full optimizer steps (forward, weighted
  BCE, backward, clipping, AdamW) on random (B, 1, D, H, W) batches — the model's cost alone,
  no data loading (the data benchmark measures that). On the CPU with ``--threads`` threads
  (default 1, so numbers compare per core and survive a shared machine).
- Inference: a 300 x 960 x 928 tomogram on the 16 Å grid (a typical BYU tomogram after
  resampling) through ``predict_volume`` (windows 64 x 128 x 128, overlap 0.5, Gaussian
  blending, batch 2), measured end to end (``--quick``: a 64 x 256 x 256 volume, measured as
  itself), with the GFLOP/s achieved against this CPU's own conv3d and matmul rates measured in
  the same run (the machine's practical peak at these thread counts).
- With CUDA: the same in the precision ``precision: auto`` picks (bf16, fp16 before Ampere; 4m
  and 16m presets, training patches 128 x 256 x 256), inference of the whole volume, and the
  fraction of ``--peak-tflops`` reached.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks.table import format_table, row
from motorsearch.config import ExperimentConfig, ModelConfig
from motorsearch.evaluation.inference import predict_volume, window_steps
from motorsearch.losses import build_loss
from motorsearch.model import build_model
from motorsearch.training.device import autocast_dtype, resolve_precision
from motorsearch.training.trainer import backward_micro_batch, build_optimizer, optimizer_step

TOMOGRAM = (300, 960, 928)  # voxels at 16 Å
WINDOW = (64, 128, 128)
OVERLAP = 0.5



def run(quick: bool = False, *, threads: int = 1, peak_tflops: float | None = None) -> list[dict]:
    """Every measurement; ``quick`` uses smaller patches and fewer steps (seconds, not minutes)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = _flops()
        cpu = torch.device("cpu")
        train_patch = (32, 64, 64) if quick else (64, 128, 128)
        steps = 2 if quick else 4
        for preset in ("tiny", "4m"):
            rows.append(_training(preset, cpu, patch=train_patch, batch=2, steps=steps, precision="fp32",
                                  note=f"CPU, {threads} thread(s), batch 2x{_dims(train_patch)}"))
        rates = [_cpu_rate("conv3d", conv3d_gflops()), _cpu_rate("matmul", matmul_tflops(cpu, "fp32", 1024) * 1e3)]
        rows += rates
        rows.append(_cpu_inference("tiny", quick, conv_gflops=rates[0]["value"]))
        if torch.cuda.is_available():
            rows += _cuda(quick, peak_tflops)
    finally:
        torch.set_num_threads(saved)
    return rows


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape)


def _flops() -> list[dict]:
    rows = []
    for preset in ("tiny", "4m", "16m"):
        model = build_model(ModelConfig(preset=preset))
        flops = model.flops_per_voxel(WINDOW)
        params = sum(p.numel() for p in model.parameters())
        rows.append(row(f"forward FLOPs per voxel ({preset})", flops / 1e3, "kFLOP/voxel",
                         f"{params / 1e6:.2f}M parameters, stride 16; training ~3x"))
    return rows


@dataclass
class StepRun:
    """What :func:`train_steps` measured: the loss of every timed step, the time and peak memory per step."""

    losses: list[float]
    seconds_per_step: float
    voxels_per_s: float
    peak_bytes: int | None  # CUDA only
    model: torch.nn.Module


def train_steps(preset: str, device: torch.device, *, patch, batch: int, steps: int, precision: str,
                seed: int = 0) -> StepRun:
    """``steps`` optimizer steps (after one warm-up step) of ``preset`` on one fixed random batch, in
    ``precision`` exactly (fp16 with a GradScaler); the same seed gives the same model and batch."""
    cfg = ExperimentConfig()
    cfg.model.preset = preset
    torch.manual_seed(seed)
    model = build_model(cfg.model).to(device).train()
    optimizer = build_optimizer(model, cfg)
    loss_fn = build_loss(cfg.loss)
    dtype = autocast_dtype(precision)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    images = torch.randn(batch, 1, *patch, device=device)
    targets = torch.rand(batch, 1, *(p // 16 for p in patch), device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        loss = loss_fn(logits.float(), targets)
        backward_micro_batch(loss, scaler, 1)
        optimizer_step(model, optimizer, scaler, grad_clip=1.0)
        return loss.detach()

    step()  # warm-up: allocations, cuDNN autotuning
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    losses = [step() for _ in range(steps)]
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return StepRun(losses=[float(v) for v in losses], seconds_per_step=seconds / steps,
                   voxels_per_s=steps * batch * math.prod(patch) / seconds, peak_bytes=peak, model=model)


def _training(preset: str, device: torch.device, *, patch, batch: int, steps: int, precision: str,
              note: str, peak_tflops: float | None = None) -> dict:
    measured = train_steps(preset, device, patch=patch, batch=batch, steps=steps, precision=precision)
    if peak_tflops:
        flops = 3 * measured.model.flops_per_voxel(tuple(patch)) * measured.voxels_per_s
        note += f"; {flops / 1e12:.1f} TFLOP/s = {100 * flops / (peak_tflops * 1e12):.1f}% of {peak_tflops:g} peak"
    return row(f"training throughput ({preset}, {device.type}, {precision})", measured.voxels_per_s / 1e6,
               "Mvoxel/s", note)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def window_count(shape, window=WINDOW, stride: int = 16, overlap: float = OVERLAP) -> int:
    """Sliding windows ``predict_volume`` runs over ``shape`` (padded to multiples of ``stride``)."""
    steps = window_steps(window, stride, overlap)
    count = 1
    for n, w, s in zip(shape, window, steps, strict=True):
        padded = max(math.ceil(n / stride) * stride, w)
        count *= math.ceil((padded - w) / s) + 1
    return count


def _inference_seconds(model: torch.nn.Module, shape, device: torch.device, precision: str, batch: int) -> float:
    volume = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    kwargs = dict(patch_size=WINDOW, stride=16, overlap=OVERLAP, batch_size=batch, device=device,
                  precision=precision)
    predict_volume(model, volume[:WINDOW[0], :WINDOW[1], :WINDOW[2]], **kwargs)  # warm-up
    _sync(device)
    started = time.perf_counter()
    predict_volume(model, volume, **kwargs)
    _sync(device)
    return time.perf_counter() - started


def _cpu_inference(preset: str, quick: bool, *, conv_gflops: float) -> dict:
    model = build_model(ModelConfig(preset=preset)).eval()
    shape = (64, 256, 256) if quick else TOMOGRAM
    seconds = _inference_seconds(model, shape, torch.device("cpu"), "fp32", batch=2)
    gflops = model.flops_per_voxel(WINDOW) * window_count(shape) * math.prod(WINDOW) / seconds / 1e9
    return row(f"inference {_dims(shape)} at 16 Å ({preset}, cpu)", seconds, "s",
               f"measured end to end, {window_count(shape)} windows {_dims(WINDOW)}, overlap {OVERLAP}, batch 2, "
               f"{torch.get_num_threads()} thread(s): {gflops:.1f} GFLOP/s = {100 * gflops / conv_gflops:.0f}% of "
               "the conv3d rate")


def _cpu_rate(kind: str, gflops: float) -> dict:
    what = {"conv3d": "3x3x3 convolution 16 -> 16 channels, batch 2 x 32x64x64",
            "matmul": "1024 x 1024 fp32 matmul"}[kind]
    return row(f"{kind} rate of this CPU", gflops, "GFLOP/s", f"{what}, {torch.get_num_threads()} thread(s)")


def conv3d_gflops(repeats: int = 5) -> float:
    """GFLOP/s of a mid-sized 3x3x3 convolution on the CPU (best of ``repeats``): what the model's layers could reach."""
    images, weight = torch.randn(2, 16, 32, 64, 64), torch.randn(16, 16, 3, 3, 3)
    flops = 2 * images.numel() * 16 * 27
    with torch.inference_mode():
        return flops / min(_seconds(lambda: torch.nn.functional.conv3d(images, weight, padding=1))
                           for _ in range(repeats)) / 1e9


def matmul_tflops(device: torch.device, precision: str, n: int, repeats: int = 20) -> float:
    """TFLOP/s of an ``n`` x ``n`` matmul in ``precision`` on ``device``: the practical peak."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - started) / 1e12


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _cuda(quick: bool, peak_tflops: float | None) -> list[dict]:
    device = torch.device("cuda")
    precision = resolve_precision("auto", device)
    name = torch.cuda.get_device_name(device)
    patch = (64, 128, 128) if quick else (128, 256, 256)
    rows = [_training(preset, device, patch=patch, batch=2, steps=3 if quick else 10, precision=precision,
                      note=f"{name}, batch 2x{_dims(patch)}", peak_tflops=peak_tflops)
            for preset in ("4m", "16m")]
    shape = (96, 320, 320) if quick else TOMOGRAM
    for preset in ("tiny", "4m"):
        model = build_model(ModelConfig(preset=preset)).to(device).eval()
        seconds = _inference_seconds(model, shape, device, precision, batch=8)
        note = f"{name}, {precision}, windows {_dims(WINDOW)} overlap {OVERLAP}, batch 8"
        if peak_tflops:
            flops = model.flops_per_voxel(WINDOW) * window_count(shape) * math.prod(WINDOW) / seconds
            note += f"; {flops / 1e12:.1f} TFLOP/s = {100 * flops / (peak_tflops * 1e12):.1f}% of peak"
        rows.append(row(f"inference {_dims(shape)} at 16 Å ({preset}, cuda)", seconds, "s", note))
    return rows



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_training", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: per-core numbers)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's peak TFLOP/s in the precision used, "
                                                          "e.g. 989 for an H100 SXM in bf16 (dense)")
    args = parser.parse_args(argv)
    print(format_table(run(quick=args.quick, threads=args.threads, peak_tflops=args.peak_tflops)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
