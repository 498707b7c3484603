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

    .venv/bin/python benchmarks/guard.py              # print the ratio
    .venv/bin/python benchmarks/guard.py --check 1.3  # exit 1 if tunesmith is not 1.3x faster
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per side (after 2 warm-up steps)")
    ap.add_argument("--check", type=float, default=0.0, help="fail (exit 1) when the speed-up is below this")
    args = ap.parse_args()

    import torch
    import transformers as tf
    from peft import LoraConfig, get_peft_model

    from tunesmith.chat import IGNORE
    from tunesmith.train.loss import answer_loss_sum

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
    model = get_peft_model(
        tf.LlamaForCausalLM(cfg), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (1, 224))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :192] = IGNORE

    def reference():
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()

    def ours():
        loss, n = answer_loss_sum(model, ids, mask, labels)
        (loss / n).backward()

    times: dict[str, list[float]] = {"reference": [], "tunesmith": []}
    for i in range(args.steps + 2):
        for name, fn in (("reference", reference), ("tunesmith", ours)):
            t = time.perf_counter()
            fn()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    ref, mine = statistics.median(times["reference"]), statistics.median(times["tunesmith"])
    ratio = ref / mine
    print(
        json.dumps(
            {
                "reference_step_s": round(ref, 4),
                "tunesmith_step_s": round(mine, 4),
                "speedup": round(ratio, 2),
            }
        )
    )
    if args.check and ratio < args.check:
        print(
            f"speed regression: tunesmith's training step is {ratio:.2f}x the reference's, expected at least "
            f"{args.check}x (benchmarks/guard.py)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
