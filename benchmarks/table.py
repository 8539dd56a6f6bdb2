"""The row format every benchmark returns, and the plain-text table it prints."""

from __future__ import annotations


def row(metric: str, value: float, unit: str, note: str = "") -> dict:
    """One measurement: what, how much, in which unit, and under which conditions."""
    return {"metric": metric, "value": float(value), "unit": unit, "note": note}


def format_table(rows: list[dict]) -> str:
    width = max(len(r["metric"]) for r in rows)
    lines = [f"{'metric':<{width}}  {'value':>10}  {'unit':<12}  note", "-" * (width + 40)]
    lines += [f"{r['metric']:<{width}}  {r['value']:>10.3f}  {r['unit']:<12}  {r['note']}" for r in rows]
    return "\n".join(lines)
