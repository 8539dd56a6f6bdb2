"""``make gpu-check``: the dry run on the CPU runs every section; the report survives a section's failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.table import row

REPO = Path(__file__).resolve().parents[1]


def test_the_dry_run_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "GPU_REPORT.md"
    process = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(out),
                              "--workdir", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# GPU check\n\nDRY RUN at tiny sizes on the CPU")
    for name in gpu_check.SECTIONS:
        assert f"| {name} | done in " in text
    for metric in ("optimizer step (tiny, fp16)", "resume fp32 checkpoint in fp16", "resume fp16 checkpoint in bf16",
                   "training throughput (tiny, fp32)", "inference 64x128x160 (tiny, fp32)",
                   "search shared: trial-epochs per second", "search: shared / alone throughput",
                   "patch sampler 32x64x64"):
        assert f"| {metric} | " in text
    assert "ok: 2 trials x {'cpu': 0.5, 'gpu': 0.5}, 2 at a time" in text  # each trial had one device id
    assert text.rstrip().endswith("Every check held.")


def test_the_report_is_written_after_each_section_and_a_failure_does_not_stop_the_rest(tmp_path, monkeypatch):
    out = tmp_path / "report.md"
    seen_by_second = []

    def broken(check):
        raise RuntimeError("no card today")

    def second(check):
        seen_by_second.append(out.read_text())
        return [row("something", 1.5, "s", "measured")]

    monkeypatch.setattr(gpu_check, "SECTIONS", {"first": broken, "second": second})
    assert gpu_check.main(["--dry-run", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 1
    assert "| first | FAILED after 0 s: RuntimeError: no card today |" in seen_by_second[0]
    assert "| second | running |" in seen_by_second[0]
    text = out.read_text()
    assert "| second | something | 1.5 | s | measured |" in text
    assert text.rstrip().endswith("Checks failed: first raised RuntimeError.")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_a_gpu_and_without_dry_run_it_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert gpu_check.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == ("gpu-check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU "
                   "machine, or `make gpu-check ARGS=--dry-run` for the CPU smoke run.\n")
    assert not out.exists()
