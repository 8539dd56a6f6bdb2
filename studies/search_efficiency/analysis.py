"""Turn the study's CSVs into best-F2-versus-budget curves, a plot and ``REPORT.md``.

A search's budget curve: its reported epochs in the order they were reported (``reported_at``),
each charged as the epochs its trial advanced; after ``b`` trial-epochs the curve is the best
``val_f2`` reported so far (NaN before the first report). Reports past the budget (trials still
running when the budget ran out) are left out, so every arm is judged on exactly ``budget``.
Across seeds the plot and ``curves.csv`` show the median and the range (min to max).
"""

from __future__ import annotations

import csv
import datetime
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.report import machine
from motorsearch.atomic import replacing, write_text

ARM_LABELS = {"defaults": "research defaults", "random": "random search", "tpe": "TPE", "tpe_asha": "TPE + ASHA"}
ARM_COLOURS = {"defaults": "#7f7f7f", "random": "#1f77b4", "tpe": "#ff7f0e", "tpe_asha": "#2ca02c"}
CURVES_CSV = "curves.csv"
PLOT_PNG = "best_f2_vs_budget.png"
REPORT_MD = "REPORT.md"
CHECKPOINTS = (0.25, 0.5, 1.0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def spent_epochs(reports: Iterable[dict[str, Any]]) -> int:
    """Trial-epochs a search spent: the sum over its trials of the highest epoch each reported."""
    reached: dict[str, int] = {}
    for report in reports:
        reached[str(report["trial"])] = max(reached.get(str(report["trial"]), 0), int(report["epoch"]))
    return sum(reached.values())


def budget_curve(reports: Iterable[dict[str, Any]], budget: int, *, key: str = "val_f2") -> list[float]:
    """Best ``key`` (``val_f2``) after 1..``budget`` trial-epochs of one search (see the module docstring)."""
    curve = [math.nan] * budget
    reached: dict[str, int] = {}
    spent, best = 0, math.nan
    for report in sorted(reports, key=lambda r: float(r["reported_at"])):
        trial, epoch = str(report["trial"]), int(report["epoch"])
        spent += max(0, epoch - reached.get(trial, 0))
        reached[trial] = max(reached.get(trial, 0), epoch)
        if spent > budget:
            break
        value = float(report[key])
        best = value if math.isnan(best) else max(best, value)
        for b in range(spent, budget + 1):
            curve[b - 1] = best
    return curve


def first_reach(curve: Sequence[float], target: float) -> float | None:
    """The budget fraction at which ``curve`` first reaches ``target`` (None if it never does)."""
    for spent, value in enumerate(curve, 1):
        if not math.isnan(value) and value >= target - 1e-9:
            return spent / len(curve)
    return None


def spread(values: Iterable[float]) -> tuple[float, float, float]:
    """(median, min, max) of the non-NaN ``values``; NaNs when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan, math.nan
    return statistics.median(kept), min(kept), max(kept)


def curves_by_arm(reports: list[dict[str, Any]], budget: int, *, key: str = "val_f2") -> dict[str, dict[int, list[float]]]:
    """arm -> seed -> budget curve of ``key``."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for report in reports:
        grouped[(report["arm"], int(report["seed"]))].append(report)
    curves: dict[str, dict[int, list[float]]] = defaultdict(dict)
    for (arm, seed), rows in sorted(grouped.items()):
        curves[arm][seed] = budget_curve(rows, budget, key=key)
    return curves


def reach_fractions(curves: dict[str, dict[int, list[float]]], *, arm: str = "tpe_asha",
                    baseline: str = "random") -> dict[int, float | None]:
    """Per seed: the budget fraction at which ``arm`` first matches ``baseline``'s final best."""
    fractions = {}
    for seed, base_curve in curves.get(baseline, {}).items():
        if seed in curves.get(arm, {}) and not math.isnan(base_curve[-1]):
            fractions[seed] = first_reach(curves[arm][seed], base_curve[-1])
    return fractions


def summary(outcomes: list[dict[str, Any]], curves: dict[str, dict[int, list[float]]]) -> list[dict[str, Any]]:
    """One row per arm: best val_f2 at each budget checkpoint, test F2 and trials (median, min, max)."""
    rows = []
    for arm in [a for a in ARM_LABELS if a in curves]:
        mine = [o for o in outcomes if o["arm"] == arm]
        budget = len(next(iter(curves[arm].values())))
        row: dict[str, Any] = {"arm": arm, "seeds": len(curves[arm])}
        for fraction in CHECKPOINTS:
            index = max(1, round(fraction * budget)) - 1
            row[f"val_{fraction:g}"] = spread(c[index] for c in curves[arm].values())
        row["test_f2"] = spread(float(o["test_f2"]) for o in mine)
        row["trials"] = spread(float(o["trials"]) for o in mine)
        row["wall_min"] = spread(float(o["wall_s"]) / 60 for o in mine)
        rows.append(row)
    return rows


def write_curves(path: Path, curves: dict[str, dict[int, list[float]]]) -> None:
    lines = [("arm", "trial_epochs", "budget_fraction", "median", "min", "max", "seeds")]
    for arm, by_seed in curves.items():
        budget = len(next(iter(by_seed.values())))
        for spent in range(1, budget + 1):
            median, low, high = spread(c[spent - 1] for c in by_seed.values())
            lines.append((arm, spent, f"{spent / budget:.4f}", *(_num(v) for v in (median, low, high)), len(by_seed)))
    write_text(path, "\n".join(",".join(str(cell) for cell in line) for line in lines) + "\n")


def plot(path: Path, curves: dict[str, dict[int, list[float]]], outcomes: list[dict[str, Any]]) -> None:
    """Left: best val_f2 versus budget (median line, min-max band); right: each seed's test F2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    arms = [a for a in ARM_LABELS if a in curves]
    for arm in arms:
        budget = len(next(iter(curves[arm].values())))
        x = [100 * (i + 1) / budget for i in range(budget)]
        stats = [spread(c[i] for c in curves[arm].values()) for i in range(budget)]
        left.plot(x, [s[0] for s in stats], color=ARM_COLOURS[arm], lw=2, label=ARM_LABELS[arm])
        left.fill_between(x, [s[1] for s in stats], [s[2] for s in stats], color=ARM_COLOURS[arm], alpha=0.15)
    left.set_xlabel(f"budget spent (% of {budget} trial-epochs)")
    left.set_ylabel("best validation F2 so far")
    left.set_title(f"best val F2 vs budget (median, min-max over {_seed_count(curves)} seeds)")
    left.set_xlim(0, 100)
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    for position, arm in enumerate(arms):
        values = [float(o["test_f2"]) for o in outcomes if o["arm"] == arm]
        right.scatter([position] * len(values), values, color=ARM_COLOURS[arm], alpha=0.7, zorder=3)
        right.hlines(statistics.median(values), position - 0.3, position + 0.3, color=ARM_COLOURS[arm], lw=2.5)
    right.set_xticks(range(len(arms)), [ARM_LABELS[a] for a in arms], rotation=20)
    right.set_ylabel("test-split F2 of the exported model")
    right.set_title("test F2 (dots: seeds, bar: median)")
    right.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def report(outcomes: list[dict[str, Any]], curves: dict[str, dict[int, list[float]]], *, command: str) -> str:
    """The markdown report: set-up, table, and the two headline numbers."""
    rows = summary(outcomes, curves)
    budget = int(outcomes[0]["budget"])
    fractions = reach_fractions(curves)
    reached = [f for f in fractions.values() if f is not None]
    minutes = sum(float(o["wall_s"]) for o in outcomes) / 60
    lines = [
        "# Search-efficiency study",
        "",
        f"Generated {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {machine()}, by",
        "",
        f"    {command}",
        "",
        f"Budget: {budget} trial-epochs per search; {_seed_count(curves)} seeds per arm; the arms took "
        f"{minutes:.1f} min in all (plus about a minute, once, to simulate and cache the data). Set-up: `studies/search_efficiency/base.yaml` and `space.yaml`; "
        "method: `study.py`.",
        "",
        "| arm | best val F2 @25% | @50% | @100% budget | test F2 of exported model | trials | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [_cell(row[f"val_{f:g}"]) for f in CHECKPOINTS]
        lines.append(f"| {ARM_LABELS[row['arm']]} | {' | '.join(cells)} | {_cell(row['test_f2'])} | "
                     f"{_cell(row['trials'], digits=0)} | {_cell(row['wall_min'], digits=1)} |")
    lines += ["", "Cells: median [min-max] over seeds. Best val F2 is the best epoch of any trial so far (validation "
              "fold, threshold swept); test F2 is the exported model on the held-out split.", "", "## Headline", ""]
    if fractions:
        shown = ", ".join(f"seed {s}: {'never' if f is None else f'{100 * f:.0f}%'}" for s, f in fractions.items())
        median_text = (f"{100 * statistics.median(reached):.0f}%" if len(reached) == len(fractions)
                       else f"not reached in {len(fractions) - len(reached)} of {len(fractions)} seeds")
        lines.append(f"- TPE + ASHA first reaches random search's final best val F2 (same seed) at a median of "
                     f"**{median_text}** of the budget ({shown}); the goal is at most 40%.")
        others = []
        for arm in ("random", "tpe"):
            own = [f for f in reach_fractions(curves, arm=arm).values() if f is not None]
            if arm in curves and own:
                others.append(f"{ARM_LABELS[arm]} at {100 * statistics.median(own):.0f}%")
        if others:
            lines.append(f"- For comparison, the first time random search's final best was reached: {', '.join(others)} "
                         "(median over seeds).")
    by_arm = {row["arm"]: row for row in rows}
    if "defaults" in by_arm:
        base = by_arm["defaults"]["test_f2"][0]
        for arm in ("random", "tpe", "tpe_asha"):
            if arm in by_arm:
                gain = by_arm[arm]["test_f2"][0] - base
                lines.append(f"- {ARM_LABELS[arm]}: test F2 {by_arm[arm]['test_f2'][0]:.3f} against the defaults' "
                             f"{base:.3f} (median), a gain of **{gain:+.3f}**.")
    lines += ["", f"![best F2 versus budget]({PLOT_PNG})", "", "## Method", "",
              "- Every arm trains the same experiment (`base.yaml`: simulated tomograms at difficulty 1.5, "
              "tiny preset, at most 6 epochs per trial, 2 trials at a time, 1 CPU each); a seed sets the "
              "sampler and the weight initialisation.",
              "- The defaults arm is one run of the research settings (weighted BCE with pos_weight 10, "
              "sigma 200 Å, lr 5e-4, one learning rate), so its curve stops rising after 6 trial-epochs.",
              "- The search arms end when their trials have trained the budget between them "
              "(`budget_epochs`); trial-epochs are charged in the order they were reported.",
              "- Best val F2 is the maximum over every trial-epoch seen so far, so it rises with the number "
              "of looks as well as with real progress; the test F2 of the one exported model (best trial, "
              "best epoch, chosen on validation only) is the unbiased comparison.",
              "- Headline fraction: per seed, the first budget at which TPE + ASHA's best val F2 reaches "
              "random search's best at 100% of the budget; median over seeds.", ""]
    return "\n".join(lines)


def write_all(out: Path, *, command: str) -> None:
    """``curves.csv``, the plot and ``REPORT.md`` from ``reports.csv`` and ``outcomes.csv`` in ``out``."""
    outcomes = read_csv(out / "outcomes.csv")
    reports = read_csv(out / "reports.csv")
    if not outcomes:
        raise SystemExit(f"{out / 'outcomes.csv'} has no finished arm to analyse")
    curves = curves_by_arm(reports, int(outcomes[0]["budget"]))
    write_curves(out / CURVES_CSV, curves)
    plot(out / PLOT_PNG, curves, outcomes)
    write_text(out / REPORT_MD, report(outcomes, curves, command=command))


def _cell(stats: tuple[float, float, float], digits: int = 3) -> str:
    median, low, high = stats
    if math.isnan(median):
        return "-"
    return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def _num(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


def _seed_count(curves: dict[str, dict[int, list[float]]]) -> int:
    return max((len(by_seed) for by_seed in curves.values()), default=0)
