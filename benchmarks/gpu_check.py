"""The one-shot GPU check: does everything the project claims about GPUs hold on this card?

``make gpu-check`` (``python -m benchmarks.gpu_check``) on a machine with one CUDA GPU, ≤ 8
minutes all told; ``--dry-run`` runs the same code at tiny sizes on the CPU (CI runs it: the
numbers mean nothing, the code paths are exercised). Without a GPU and without ``--dry-run`` it
exits with code 2 and writes nothing. Sections, in order (``--only`` picks some):

- ``precisions``: optimizer steps of the 4m preset on one fixed batch in fp32, bf16 and fp16
  (GradScaler): finite losses, the bf16/fp16 loss curves against fp32's, time and peak memory per step;
- ``resume``: ``fit`` one epoch in each precision, then resume it for a second epoch in each
  precision (the same and across);
- ``throughput``: training voxels/s of the tiny and 4m presets, and the fraction of the card's
  peak: a bf16 matmul measured in the same run and the datasheet figure where the card is known;
- ``inference``: a whole 300 x 960 x 928 tomogram through ``predict_volume`` (4m), fp32 against
  the ``auto`` precision, time and peak memory, measured (no extrapolation);
- ``search`` (``benchmarks.gpu_check_search``): a real search of 8 trials, 4 at a time x
  ``gpu: 0.25`` with ASHA, against trials alone on the card (``gpu: 1``) for the same epochs:
  trial-epochs/s of each and their ratio, the GPU memory of each trial process (``nvidia-smi``),
  each trial's device id;
- ``sampler``: the patch sampler's patches/s at the BYU patch size (one core) against the
  patches/s the GPU trains at that size: how many DataLoader workers keep the card fed.

``benchmarks/GPU_REPORT.md`` (``--out``; a dry run writes into the temporary folder) is rewritten
after every section, so a timeout keeps what finished; a section that fails is reported with its
error and the next one runs. Exit code 0 when every section ran and every check held, 1 otherwise.
Sized for an H100/H200-class card (about 5 minutes, estimated: it has not run on one yet).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from benchmarks.bench_training import TOMOGRAM, WINDOW, _inference_seconds, matmul_tflops, train_steps, window_count
from benchmarks.gpu_check_search import search
from benchmarks.report import machine, markdown
from benchmarks.table import format_table, row
from motorsearch.atomic import write_text
from motorsearch.training.device import release_gpu_memory, resolve_precision

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "fp16")
LOSS_TOLERANCE = 0.10  # largest relative gap of a mixed-precision loss from fp32's over the same steps
# dense bf16 (fp16 before Ampere) tensor-core TFLOP/s from the datasheets; first matching name wins
DATASHEET_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0))


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the real check, or the CPU dry run."""

    preset: str = "4m"
    step_patch: tuple[int, int, int] = (64, 128, 128)
    steps: int = 8
    resume_pairs: tuple[tuple[str, str], ...] = tuple((a, b) for a in PRECISIONS for b in PRECISIONS)
    resume_patch: tuple[int, int, int] = (64, 128, 128)
    throughput_patch: tuple[int, int, int] = (128, 256, 256)
    throughput_steps: int = 10
    matmul_n: int = 8192
    tomogram: tuple[int, int, int] = TOMOGRAM
    window_batch: int = 8
    shared_trials: int = 8
    shared_concurrent: int = 4
    shared_gpu: float = 0.25
    alone_trials: int = 2
    search_epochs: int = 4
    search_patch: tuple[int, int, int] = (64, 128, 128)
    sampler_patch: tuple[int, int, int] | None = None  # None: experiments/byu.yaml's
    sampler_patches: int = 30
    sampler_volume: tuple[int, int, int] = (192, 400, 400)


DRY_RUN = Sizes(preset="tiny", step_patch=(16, 32, 32), steps=2, resume_pairs=(("fp32", "fp16"), ("fp16", "bf16")),
                resume_patch=(32, 64, 64), throughput_patch=(16, 32, 32), throughput_steps=2, matmul_n=256,
                tomogram=(64, 128, 160), window_batch=2, shared_trials=2, shared_concurrent=2, shared_gpu=0.5,
                alone_trials=1, search_epochs=1, search_patch=(32, 64, 64), sampler_patch=(32, 64, 64),
                sampler_patches=4, sampler_volume=(64, 128, 128))


@dataclass
class Check:
    """What the sections share: where they run, at which sizes, and the checks that failed."""

    device: torch.device
    sizes: Sizes
    workdir: Path
    failed: list[str] = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> str:
        if not ok:
            self.failed.append(what)
        return "ok" if ok else "FAILED"


# ---------------------------------------------------------------------------------------------
# sections


def precisions(check: Check) -> list[dict]:
    s, rows, curves = check.sizes, [], {}
    for precision in PRECISIONS:
        run = train_steps(s.preset, check.device, patch=s.step_patch, batch=2, steps=s.steps, precision=precision)
        curves[precision] = run.losses
        finite = all(math.isfinite(v) for v in run.losses)
        gap = max(abs(a - b) / abs(b) for a, b in zip(run.losses, curves["fp32"], strict=True))
        if check.device.type == "cuda":
            status = check.expect(finite and gap <= LOSS_TOLERANCE, f"{precision} steps finite and within "
                                  f"{LOSS_TOLERANCE:.0%} of fp32")
        else:  # CPU autocast is not a path the product takes (a CPU trains in fp32); bf16 backward gives NaN here
            status = "not checked on a CPU"
        rows.append(row(f"optimizer step ({s.preset}, {precision})", run.seconds_per_step * 1e3, "ms",
                        f"{status}: batch 2x{_dims(s.step_patch)}, losses {run.losses[0]:.4f} -> {run.losses[-1]:.4f}, "
                        f"largest gap from fp32 {gap:.1%}, peak {_mib(run.peak_bytes)}"))
        del run
        release_gpu_memory()
    return rows


def resume(check: Check) -> list[dict]:
    from motorsearch.config import from_dict
    from motorsearch.data.cache import prepare
    from motorsearch.training.trainer import fit

    s, rows = check.sizes, []
    data = simulated_data(check.workdir / "resume_data")

    def config(precision: str, epochs: int):
        return from_dict({"device": check.device.type, "data": {"root": str(data), "cache_dir": str(check.workdir / "cache"),
                                                                "n_folds": 2, "spacing": 16.0},
                          "sampling": {"patch_size": list(s.resume_patch), "batch_size": 2, "patches_per_epoch": 4},
                          "model": {"preset": "tiny"}, "optim": {"epochs": epochs, "precision": precision},
                          "validation": {"window_batch_size": 2, "overlap": 0.25}})

    cache = prepare(config("fp32", 1).data)
    firsts = {}
    for first in dict.fromkeys(a for a, _ in s.resume_pairs):
        firsts[first] = fit(config(first, 1), workdir=check.workdir / f"resume_{first}", cache=cache).last_checkpoint
    for first, then in s.resume_pairs:
        started = time.perf_counter()
        try:
            result = fit(config(then, 2), workdir=check.workdir / f"resume_{first}_{then}", cache=cache,
                         resume_from=firsts[first])
            ok = [h["epoch"] for h in result.history] == [1.0, 2.0] and math.isfinite(result.history[-1]["train_loss"])
            error = ""
        except Exception as exc:  # the check is whether it raises
            ok, error = False, f": {type(exc).__name__}: {str(exc)[:200]}"
        status = check.expect(ok, f"resume {first} -> {then}")
        rows.append(row(f"resume {first} checkpoint in {then}", time.perf_counter() - started, "s",
                        f"{status}{error} (one epoch of the tiny preset, then validation)"))
        release_gpu_memory()
    return rows


def throughput(check: Check) -> list[dict]:
    s = check.sizes
    precision = resolve_precision("auto", check.device)
    matmul = matmul_tflops(check.device, precision, s.matmul_n)
    name = _device_name(check.device)
    sheet = next((tflops for key, tflops in DATASHEET_TFLOPS if key in name), None)
    rows = [row(f"matmul {s.matmul_n}^2 ({precision})", matmul, "TFLOP/s",
                f"{name}; datasheet {sheet:g} TFLOP/s dense" if sheet else f"{name}; no datasheet figure known")]
    for preset in dict.fromkeys(("tiny", s.preset)):
        run = train_steps(preset, check.device, patch=s.throughput_patch, batch=2, steps=s.throughput_steps,
                          precision=precision)
        tflops = 3 * run.model.flops_per_voxel(s.throughput_patch) * run.voxels_per_s / 1e12
        of_sheet = f", {100 * tflops / sheet:.1f}% of the datasheet" if sheet else ""
        rows.append(row(f"training throughput ({preset}, {precision})", run.voxels_per_s / 1e6, "Mvoxel/s",
                        f"batch 2x{_dims(s.throughput_patch)}: {tflops:.2f} TFLOP/s = {100 * tflops / matmul:.1f}% "
                        f"of the measured matmul{of_sheet}; peak {_mib(run.peak_bytes)}"))
        del run
        release_gpu_memory()
    return rows


def inference(check: Check) -> list[dict]:
    from motorsearch.config import ModelConfig
    from motorsearch.model import build_model

    s, rows = check.sizes, []
    model = build_model(ModelConfig(preset=s.preset)).to(check.device).eval()
    flops = model.flops_per_voxel(WINDOW) * window_count(s.tomogram) * math.prod(WINDOW)
    for precision in dict.fromkeys(("fp32", resolve_precision("auto", check.device))):
        if check.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(check.device)
        seconds = _inference_seconds(model, s.tomogram, check.device, precision, batch=s.window_batch)
        peak = torch.cuda.max_memory_allocated(check.device) if check.device.type == "cuda" else None
        rows.append(row(f"inference {_dims(s.tomogram)} ({s.preset}, {precision})", seconds, "s",
                        f"measured end to end, {window_count(s.tomogram)} windows {_dims(WINDOW)} overlap 0.5, "
                        f"batch {s.window_batch}: {flops / seconds / 1e12:.2f} TFLOP/s, peak {_mib(peak)}"))
        release_gpu_memory()
    return rows


def sampler(check: Check) -> list[dict]:
    from benchmarks.bench_data import patches_per_second, sampling_cache

    s = check.sizes
    patch = s.sampler_patch or tuple(yaml.safe_load((REPO / "experiments" / "byu.yaml").read_text())["sampling"]["patch_size"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        drawn = patches_per_second(sampling_cache(check.workdir / "sampler", shape=s.sampler_volume), patch, s.sampler_patches)
    finally:
        torch.set_num_threads(threads)
    trained = train_steps(s.preset, check.device, patch=patch, batch=2, steps=s.throughput_steps,
                          precision=resolve_precision("auto", check.device))
    gpu_rate = 2 / trained.seconds_per_step
    release_gpu_memory()
    return [row(f"patch sampler {_dims(patch)}", drawn, "patches/s", "one core: read, normalise, heatmap, augment"),
            row(f"training {s.preset} on {_dims(patch)}", gpu_rate, "patches/s",
                f"batch 2; one sampler core feeds {100 * min(1.0, drawn / gpu_rate):.0f}% of it, "
                f"{math.ceil(gpu_rate / drawn)} DataLoader worker(s) keep up")]


SECTIONS: dict[str, Callable[[Check], list[dict]]] = {
    "precisions": precisions, "resume": resume, "throughput": throughput, "inference": inference,
    "search": search, "sampler": sampler,
}


# ---------------------------------------------------------------------------------------------
# helpers


def simulated_data(root: Path) -> Path:
    from motorsearch.data.simulate import simulate_dataset

    if not (root / "simulation.json").is_file():
        simulate_dataset(root, n_train=6, n_test=0, seed=3, scale=0.5)
    return root


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _driver() -> str:
    if not shutil.which("nvidia-smi"):
        return "driver unknown (no nvidia-smi)"
    answer = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return f"driver {answer.splitlines()[0]}" if answer else "driver unknown"


def _dims(shape) -> str:
    return "x".join(str(n) for n in shape)


def _mib(value: int | None) -> str:
    return "n/a on CPU" if value is None else f"{value / 2 ** 20:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# the report and the command


def report_text(check: Check, dry_run: bool, done: list[tuple[str, list[dict]]], status: dict[str, str]) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = (f"{_device_name(check.device)}, {_driver()}, torch {torch.__version__} (CUDA {torch.version.cuda})"
             if check.device.type == "cuda" else "no GPU")
    lines = ["# GPU check", "",
             f"{'DRY RUN at tiny sizes on the CPU: the numbers mean nothing. ' if dry_run else ''}Measured {stamp} on: "
             f"{where}; {machine()}.", "", "| section | status |", "|---|---|"]
    lines += [f"| {name} | {state} |" for name, state in status.items()]
    lines += ["", markdown(done) if done else "(no section finished yet)", ""]
    lines.append(f"Checks failed: {'; '.join(check.failed)}." if check.failed else "Every check held.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the code paths, not the numbers")
    parser.add_argument("--out", type=Path, help="the markdown report (default benchmarks/GPU_REPORT.md; for a dry "
                                                 "run a file in the temporary folder, so it never replaces a real one)")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)")
    parser.add_argument("--workdir", type=Path, help="scratch space (default: a temporary folder, removed after)")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine, "
              "or `make gpu-check ARGS=--dry-run` for the CPU smoke run.", file=sys.stderr)
        return 2
    if args.dry_run:  # a CI machine's cores are shared: one thread, as the tests use
        torch.set_num_threads(1)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    args.out = args.out or (Path(tempfile.gettempdir()) / "motorsearch_gpu_check_dry_run.md" if args.dry_run
                            else REPO / "benchmarks" / "GPU_REPORT.md")
    check = Check(device=torch.device("cpu" if args.dry_run else "cuda"), sizes=DRY_RUN if args.dry_run else Sizes(),
                  workdir=workdir)
    names = args.only or list(SECTIONS)
    status = {name: "not reached" for name in names}
    done: list[tuple[str, list[dict]]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            started = time.perf_counter()
            status[name] = "running"
            write_text(args.out, report_text(check, args.dry_run, done, status))
            print(f"gpu-check: {name} ...", flush=True)
            try:
                done.append((name, SECTIONS[name](check)))
                status[name] = f"done in {time.perf_counter() - started:.0f} s"
            except Exception as exc:  # report it and go on: a timeout must keep what the others found
                traceback.print_exc()
                check.failed.append(f"{name} raised {type(exc).__name__}")
                status[name] = f"FAILED after {time.perf_counter() - started:.0f} s: {type(exc).__name__}: " \
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
            write_text(args.out, report_text(check, args.dry_run, done, status))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_table([r for _, rows in done for r in rows]) if done else "no section finished")
    print(f"report: {args.out}")
    return 0 if not check.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
