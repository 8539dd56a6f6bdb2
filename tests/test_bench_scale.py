"""``benchmarks/bench_scale.py`` at a tiny size: a real two-node Ray cluster, the product's runner,
MLflow and Optuna; the table counts what really happened, and the report keeps its hand-written part."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _table(text: str) -> dict[str, tuple[float, str]]:
    """metric -> (value, note) from the report's ``| scale | metric | value | unit | note |`` rows."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] == "scale":
            rows[cells[1]] = (float(cells[2]), cells[4])
    return rows


def test_a_tiny_simulated_cluster_runs_every_trial_through_tracking_and_the_study(tmp_path: Path) -> None:
    out = tmp_path / "SCALE_REPORT.md"
    out.write_text("# old table\n\n| scale | stale | 1 | s | |\n\n## Reading\n\nkept by hand.\n")
    process = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--nodes", "2", "--gpus-per-node", "2", "--trials", "4",
                              "--epochs", "2", "--epoch-seconds", "0.2", "--sampler", "random",
                              "--workdir", str(tmp_path / "work"), "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=150)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Many nodes, by simulation\n")
    assert text.rstrip().endswith("## Reading\n\nkept by hand.")
    rows = _table(text)
    assert "stale" not in rows
    assert rows["trials finished"] == (4.0, "2 nodes x 2 GPU, 4 trials x 2 epochs x 0.2 s; ran on 2 nodes")
    assert rows["ideal makespan"][0] == 0.4  # ceil(4 trials / 4 slots) waves x 2 epochs x 0.2 s
    assert rows["makespan"][0] > 0.4
    assert rows["overhead over the ideal"][0] == pytest.approx(100 * (rows["makespan"][0] / 0.4 - 1), rel=0.01)
    assert rows["results handled"][1].startswith("8 results;")  # 4 trials x 2 epochs, read back from MLflow
    for label, calls in (("mlflow: per result", 8), ("mlflow: trial start (run, params, config)", 4),
                         ("optuna: suggest (sample + write)", 4), ("optuna: trial end (tell)", 4),
                         ("optuna: link the MLflow run", 4)):
        assert f", {calls} calls, " in rows[f"{label}, median"][1], (label, rows[f"{label}, median"])
    assert 0 < rows["trial start latency, median"][0] < 60
    assert rows["driver CPU time"][0] > 0
    assert (tmp_path / "work" / "runs" / "scale" / "optuna.db").is_file()
