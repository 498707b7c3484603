"""`tunesmith export --verify TEST.jsonl`: does the exported file behave like the model it came from?

"The GGUF answers worse in Ollama than the model did" is among the most common complaints in the
LLaMA-Factory, Unsloth and Ollama trackers; its causes are a wrong template or tokenizer, missing stop
tokens and the quantization itself. This runs the written file through llama.cpp itself
(llama-cpp-python) and the PyTorch model tunesmith generates with, greedy, on the same test prompts, and
reports:

- whether llama.cpp tokenizes each rendered prompt to the ids tunesmith uses (a template or tokenizer
  problem shows here first);
- greedy agreement: outputs identical token for token, and the share of tokens generated before the
  first difference (both sides are fed tunesmith's prompt ids, so this measures the weights alone);
- the task metrics of both sides (eval's own scoring: ROUGE & co., format adherence with --style,
  stopped by itself) with the paired bootstrap test per metric, and a warning when the file is
  significantly worse on any of them (p < 0.05).

Both sides' texts are decoded by the same tokenizer, so a difference is the model's, not the detokenizer's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tunesmith.data.formats import load_examples
from tunesmith.errors import UserError
from tunesmith.eval.rows import per_example_values
from tunesmith.eval.run import references_of, score
from tunesmith.export import gguf_quant
from tunesmith.files.atomic import write_json
from tunesmith.models.chat import prompt_ids, render, split_prompt, stop_token_ids
from tunesmith.models.loading import Generation, generate_ids
from tunesmith.scoring.metrics import TEXT_METRICS
from tunesmith.scoring.stats import paired_test
from tunesmith.scoring.style import load_style

# a drop in these is a cost (higher is better); length ratio and new tokens are shown, not judged
JUDGED = (*TEXT_METRICS, "embedding", "label_accuracy", "format_adherence", "stopped_by_eos")
BATCH = 8


def check(path: str, limit: int, style: str | None) -> tuple[list, list]:
    """The test examples (and style rules), read before any model loads."""
    if limit < 1:
        raise UserError("--verify-limit must be at least 1")
    gguf_quant.llama_cpp("--verify")
    examples = load_examples(path, "--verify")[:limit]
    return examples, load_style(style) if style else []


def torch_side(
    model, pad_id: int, prompts: list[list[int]], stops: list[int], max_new: int
) -> list[tuple[list[int], bool]]:
    """Greedy ids of the PyTorch model, batched as `tunesmith generate` and `eval` do, and whether each
    ended with one of the `stops` (the same list llama_side stops at)."""
    outs = []
    for start in range(0, len(prompts), BATCH):
        batch = prompts[start : start + BATCH]
        got = generate_ids(model, batch, pad_id=pad_id, stop_ids=stops, max_new_tokens=max_new)
        outs += [(list(kept), bool(stopped)) for kept, stopped in got]
    return outs


def llama_side(llm, prompts: list[list[int]], stops: list[int], max_new: int) -> list[tuple[list[int], bool]]:
    """Greedy ids of llama.cpp running the file, and whether each ended with a stop token."""
    outs = []
    for ids in prompts:
        got, stopped = [], False
        for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if t in stops:
                stopped = True
                break
            got.append(int(t))
            if len(got) >= max_new:
                break
        outs.append((got, stopped))
    return outs


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    """Identical outputs, and tokens before the first difference over the reference side's tokens."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = 0
    for x, y in zip(a, b):
        k = 0
        while k < min(len(x), len(y)) and x[k] == y[k]:
            k += 1
        prefix += k
    total = sum(len(x) for x in a)
    return {
        "identical": same,
        "n": len(a),
        "prefix_share": round(100 * prefix / total, 1) if total else 100.0,
    }


def verify(model, tok, out: Path, quant: str, examples: list, rules: list, max_new: int) -> dict:
    lc = gguf_quant.llama_cpp("--verify")
    convs, refs = zip(*(split_prompt(ex.messages) for ex in examples))
    prompts = [prompt_ids(tok, c) for c in convs]
    stops = stop_token_ids(tok)
    t0 = time.time()
    torch_out = torch_side(model, tok.pad_token_id, prompts, stops, max_new)
    t_torch = time.time() - t0
    llm = lc.Llama(
        model_path=str(out),
        n_ctx=max(len(p) for p in prompts) + max_new + 8,
        n_threads=os.cpu_count() or 1,
        n_batch=512,
        verbose=False,
    )
    tokenized = sum(
        llm.tokenize(render(tok, c, True).encode(), add_bos=True, special=True) == p
        for c, p in zip(convs, prompts)
    )
    t0 = time.time()
    file_out = llama_side(llm, prompts, stops, max_new)
    t_file = time.time() - t0
    del llm

    def gens(rows):
        return [
            Generation(tok.decode(ids, skip_special_tokens=True).strip(), len(ids), s, 0) for ids, s in rows
        ]

    all_refs = [references_of(ex, r) for ex, r in zip(examples, refs)]
    m_torch, per_torch = score(gens(torch_out), all_refs, rules)
    m_file, per_file = score(gens(file_out), all_refs, rules)
    tests = {
        k: paired_test(per_example_values(per_file, k), per_example_values(per_torch, k))
        for k in m_torch
        if k in m_file and k != "ci95" and not isinstance(m_torch[k], (dict, list))
    }
    costs = {k: t for k, t in tests.items() if k in JUDGED and t["significant"] and t["change"] < 0}
    return {
        "quant": quant,
        "examples": len(examples),
        "max_new_tokens": max_new,
        "tokenized_alike": tokenized,
        "agreement": agreement([ids for ids, _ in torch_out], [ids for ids, _ in file_out]),
        "pytorch": {k: v for k, v in m_torch.items() if k != "ci95"},
        "gguf": {k: v for k, v in m_file.items() if k != "ci95"},
        "paired": tests,
        "significant_drops": sorted(costs),
        "seconds": {"pytorch": round(t_torch, 1), "llama_cpp": round(t_file, 1)},
    }


def report(v: dict, out: Path, data: str) -> None:
    a = v["agreement"]
    n = v["examples"]
    print(
        f"verify: {out.name} ({v['quant']}) through llama.cpp against the PyTorch model, greedy, "
        f"{n} examples of {data}, up to {v['max_new_tokens']} new tokens"
    )
    print(f"  llama.cpp tokenizes the prompt as tunesmith does: {v['tokenized_alike']}/{n}")
    print(
        f"  greedy agreement: {a['identical']}/{n} outputs identical; {a['prefix_share']:.1f} % of tokens "
        f"before the first difference"
    )
    print(f"  {'metric':<22}{'PyTorch':>9}{'GGUF':>9}{'change':>9}  95 % CI          p")
    for k, t in v["paired"].items():
        ci = f"[{t['ci'][0]:.2f}, {t['ci'][1]:.2f}]" if t["ci"] else "-"
        p = f"{t['p']:.3f}" if t["p"] is not None else "-"
        print(
            f"  {k.replace('_', ' '):<22}{v['pytorch'][k]:>9.2f}{v['gguf'][k]:>9.2f}{t['change']:>+9.2f}  "
            f"{ci:<16} {p}"
        )
    for k in v["significant_drops"]:
        t = v["paired"][k]
        print(
            f"warning: the {v['quant']} file is significantly worse than the model on {k.replace('_', ' ')} "
            f"({t['change']:+.2f}, 95 % CI [{t['ci'][0]:.2f}, {t['ci'][1]:.2f}], p={t['p']:.3f}, "
            f"{n} examples): ship a larger type (q5_k_m, q8_0 or f16) or check the template",
            file=sys.stderr,
        )


def write(v: dict, out: Path) -> Path:
    path = out.with_name(out.stem + ".verify.json")
    write_json(path, v)
    return path
