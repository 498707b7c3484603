"""Per-example numbers from the rows of an eval's results (`results["examples"]`): what the paired
tests, the gate and the verdict compare example by example; and what of a test example's metadata a
row keeps (`tunesmith errors` slices by it)."""

from __future__ import annotations

from tunesmith.eval.label_pairs import why_not_paired

GRADER = "grader:"  # a hosted grader's row: grader:NAME (its mean, 0-1) and grader:NAME:pass (pass rate %)
DECIMALS = {"length_ratio": 2}  # in the tables; 1 otherwise


def decimals(key: str) -> int:
    if key.startswith(GRADER) and not key.endswith(":pass"):
        return 3  # grades in [0, 1] as the hosted graders give them
    return DECIMALS.get(key, 1)


def digits(key: str) -> int:
    """Decimals a metric's mean, interval and paired change are stored with."""
    return decimals(key) + 1 if key.startswith(GRADER) and not key.endswith(":pass") else 2


def grader_rows(*metrics: dict) -> list[tuple[str, str]]:
    """The rows of the hosted graders (`eval --grader`) these metric dicts hold, in their order."""
    keys = list(dict.fromkeys(k for m in metrics for k in m if k.startswith(GRADER)))
    return [(k, f"grader {k[len(GRADER):-5]} pass %" if k.endswith(":pass") else f"grader {k[len(GRADER):]}")
            for k in keys]  # fmt: skip


def per_example_values(per: list[dict], key: str) -> list[float]:
    if key == "format_adherence":
        return [100.0 * r["format_ok"] for r in per]
    if key == "stopped_by_eos":
        return [100.0 * r["stopped"] for r in per]
    if key == "mean_new_tokens":
        return [float(r["new_tokens"]) for r in per]
    return [r["scores"][key] for r in per]


def scalar_meta(meta: dict) -> dict:
    """The metadata fields of a test example an eval keeps for slicing: short scalars (a topic, a source, a
    speaker count), not the extra references or long text."""
    return {k: v for k, v in meta.items() if k != "references" and isinstance(v, (str, int, float, bool))
            and len(str(v)) <= 100}  # fmt: skip


def same_test(a: dict, b: dict) -> str | None:
    """Why two results are not on the same frozen test set with the same decoding, or None."""
    if a.get("task") or b.get("task"):  # runs trained with --task: the texts and labels, no decoding
        return why_not_paired(a, b)
    ea, eb = a.get("examples") or [], b.get("examples") or []
    if len(ea) != len(eb):
        return f"{len(ea)} examples here, {len(eb)} there"
    for i, (x, y) in enumerate(zip(ea, eb), 1):
        if (x.get("input"), x.get("reference")) != (y.get("input"), y.get("reference")):
            return f"example {i} differs ({x.get('path')}:{x.get('line')} vs {y.get('path')}:{y.get('line')})"
    da, db = a.get("decoding") or {}, b.get("decoding") or {}
    changed = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    if changed:
        return "decoding differs: " + ", ".join(f"{k} {db.get(k)!r} -> {da.get(k)!r}" for k in changed)
    return None
