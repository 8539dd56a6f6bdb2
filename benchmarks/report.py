"""The speed report: every benchmark of the project in one markdown table.

``python -m benchmarks.report [--quick] [--out benchmarks/REPORT.md]`` runs the data, training,
inference and search-overhead benchmarks (each module's ``run(quick)``), prints one markdown table
and writes it, headed by the machine it ran on, to ``--out``. ``make bench`` runs it. Sections
of the existing file from its first ``## `` heading on (measurements made by hand, before/after
tables) are kept below the new table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
from pathlib import Path

import torch

from motorsearch.atomic import write_text

SECTIONS = (
    ("data", "benchmarks.bench_data"),
    ("training and inference", "benchmarks.bench_training"),
    ("search overhead", "benchmarks.bench_search"),
)


def machine() -> str:
    """One line naming the hardware the numbers belong to."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def markdown(sections: list[tuple[str, list[dict]]]) -> str:
    lines = ["| section | metric | value | unit | note |", "|---|---|---|---|---|"]
    for section, rows in sections:
        for row in rows:
            value = row["value"]
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {section} | {row['metric']} | {shown} | {row['unit']} | {row.get('note', '')} |")
    return "\n".join(lines)


def run(quick: bool = False, only: tuple[str, ...] = ()) -> list[tuple[str, list[dict]]]:
    results = []
    for title, module_name in SECTIONS:
        if only and not any(name in module_name for name in only):
            continue
        module = importlib.import_module(module_name)
        print(f"running {module_name} ...", flush=True)
        results.append((title, module.run(quick=quick)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", action="append", default=[], help="run only modules whose name contains this")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/REPORT.md"))
    args = parser.parse_args(argv)
    table = markdown(run(quick=args.quick, only=tuple(args.only)))
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# Speed report\n\nMeasured {stamp} on: {machine()}{' (quick sizes)' if args.quick else ''}.\n\n{table}\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, text + kept_sections(args.out))
    return 0


def kept_sections(path: Path) -> str:
    """What follows the first ``## `` heading of an existing report ("" when there is none)."""
    text = path.read_text() if path.is_file() else ""
    start = text.find("\n## ")
    return "" if start < 0 else text[start:]


if __name__ == "__main__":
    raise SystemExit(main())
