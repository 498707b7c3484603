"""Speed regression guard for CI: tunesmith's training step against the plain reference step,
timed in the same process, reported as a ratio (never an absolute time).

The model is random-weight and built in-process (LLaMA layout, SmolLM2's 49,152-token
vocabulary, 4 layers of width 256), so the output layer is most of the work, as in the small
models we train. The data is chat-shaped: a 192-token prompt and a 32-token answer.

- reference: what TRL's SFTTrainer computes, `model(input_ids, labels=labels).loss` with the
  answer-only labels (the output layer and cross-entropy over every position);
- tunesmith: `loss.answer_loss_sum` (the output layer only at answer positions).

Both are LoRA r16 on all linear layers, AdamW, one example per forward pass, fp32, alternated
step by step so that machine noise hits both alike; the median step time of each is compared.
Each side has its own copy of the model: tunesmith's LoRA layers run as one function each
(train/fused_lora.py), the reference's as PEFT runs them.
On a CPU that multiplies bf16 natively (avx512_bf16 or amx_bf16), tunesmith's bf16 path is timed too
(the frozen base in bf16 under autocast, its attention, recomputing norms and MLPs, padding to 64):
against the same fp32 reference step, TRL's CPU default, and held to the same ratio.

    .venv/bin/python benchmarks/guard.py              # print the ratio
    .venv/bin/python benchmarks/guard.py --check 1.3  # exit 1 if tunesmith is not 1.3x faster
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side (after 2 warm-up steps)")
    ap.add_argument("--check", type=float, default=0.0, help="fail (exit 1) when the speed-up is below this")
    args = ap.parse_args()

    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.chat import IGNORE
    from tunesmith.train import attention, fused_lora, machine, precision, recompute
    from tunesmith.train.loss import answer_loss_sum

    def lora_model(bf16: bool, fused: bool = True):
        torch.manual_seed(0)
        cfg = tf.LlamaConfig(
            vocab_size=49152,
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
        base = tf.LlamaForCausalLM(cfg)
        if bf16:  # as train/setup.py builds it under CPU autocast
            base = base.to(torch.bfloat16)
            base.set_attn_implementation(attention.register())
        model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        if bf16:
            recompute.apply(model)
        if fused:
            fused_lora.apply(model)
        params = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.AdamW(params, lr=1e-4)

    ids = torch.randint(0, 49152, (1, 224))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :192] = IGNORE
    padded = torch.cat([ids, torch.zeros(1, 32, dtype=ids.dtype)], 1)  # 256: the 64-token bucket
    padded_labels = torch.cat([labels, torch.full((1, 32), IGNORE)], 1)

    ref_model, ref_opt = lora_model(False, fused=False)
    model, opt = lora_model(False)
    sides = {
        "reference": (lambda: ref_model(input_ids=ids, attention_mask=mask, labels=labels).loss, ref_opt),
        "tunesmith": (lambda: (lambda lo, n: lo / n)(*answer_loss_sum(model, ids, mask, labels)), opt),
    }
    if {"avx512_bf16", "amx_bf16"} & set(machine.cpu_flags()):
        m16, opt16 = lora_model(True)

        def bf16_step():
            with precision.amp("cpu", m16):
                lo, n = answer_loss_sum(m16, padded, torch.ones_like(padded), padded_labels)
            return lo / n

        sides["tunesmith bf16"] = (bf16_step, opt16)

    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.steps + 2):
        for name, (loss_fn, optimizer) in sides.items():
            t = time.perf_counter()
            loss_fn().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["reference"])
    ratios = {name: ref / statistics.median(t) for name, t in times.items() if name != "reference"}
    print(
        json.dumps(
            {
                "reference_step_s": round(ref, 4),
                **{
                    f"{name.replace(' ', '_')}_step_s": round(statistics.median(times[name]), 4)
                    for name in ratios
                },
                "speedup": round(ratios["tunesmith"], 2),
                **(
                    {"speedup_bf16": round(ratios["tunesmith bf16"], 2)} if "tunesmith bf16" in ratios else {}
                ),
            }
        )
    )
    slow = {name: r for name, r in ratios.items() if args.check and r < args.check}
    for name, r in slow.items():
        print(
            f"speed regression: {name}'s training step is {r:.2f}x the reference's, expected at least "
            f"{args.check}x (benchmarks/guard.py)",
            file=sys.stderr,
        )
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
