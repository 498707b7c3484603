"""Per-example numbers from the rows of an eval's results (`results["examples"]`): what the paired
tests, the gate and the verdict compare example by example."""

from __future__ import annotations


def per_example_values(per: list[dict], key: str) -> list[float]:
    if key == "format_adherence":
        return [100.0 * r["format_ok"] for r in per]
    if key == "stopped_by_eos":
        return [100.0 * r["stopped"] for r in per]
    if key == "mean_new_tokens":
        return [float(r["new_tokens"]) for r in per]
    return [r["scores"][key] for r in per]
