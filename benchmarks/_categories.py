"""The per-category table both profilers print (`profile_step.py`, ours; `profile_ref_step.py`, the
authors' in their own environment): standard library only, so either environment imports it."""

from __future__ import annotations


def category_table(rows: dict[str, dict], matmul: float, count: str) -> tuple[list[dict], float]:
    """`rows[category] = {"seconds", "flops", count}` per step → (one row per category, slowest first,
    with its share of the summed time and its GFLOP/s over the `matmul` rate; that summed time)."""
    total = sum(r["seconds"] for r in rows.values())
    table = []
    for category, r in sorted(rows.items(), key=lambda kv: -kv[1]["seconds"]):
        rate = r["flops"] / r["seconds"] / 1e9 if r["flops"] and r["seconds"] else None
        table.append(
            {
                "category": category,
                "s/step": r["seconds"],
                "share": r["seconds"] / total,
                "GFLOP/step": r["flops"] / 1e9,
                "GFLOP/s": rate,
                "of matmul": None if rate is None else rate / matmul,
                count: r[count],
            }
        )
    return table, total
