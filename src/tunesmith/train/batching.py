"""Examples into optimizer steps and forward passes: length-grouped shuffling, the auto token budget
under CPU bf16 (examples packed end to end in one row), and right padding into tensors.

Why packing: a pass of one ~500-token example leaves a CPU's bf16 matmuls short of rows, and padding
rows of unequal length to one width computes tokens no loss uses. One row of whole examples up to the
budget has neither; each example keeps its own positions (from 0) and attention keeps it to itself
(attention.py), so every token's loss is what it would be alone.
"""

from __future__ import annotations

import random

from tunesmith.errors import UserError
from tunesmith.models.chat import IGNORE, encode_chat, learned_turns
from tunesmith.train.config import TrainConfig
from tunesmith.train.precision import bucket_size, packing, token_budget


def encode_all(tokenizer, examples, cfg: TrainConfig) -> tuple[list, list[str]]:
    kept, dropped = [], []
    for ex in examples:
        if not learned_turns(ex.messages):
            dropped.append(
                f"{ex.path}:{ex.line}: every assistant turn has weight 0, nothing to learn; dropped"
            )
            continue
        try:
            enc = encode_chat(tokenizer, ex.messages, cfg.train_on, ex.tools)
        except ValueError as e:  # what the model's chat template cannot do with this example
            raise UserError(f"{ex.path}:{ex.line}: {e}") from None
        if len(enc.input_ids) > cfg.max_length:
            dropped.append(
                f"{ex.path}:{ex.line}: {len(enc.input_ids)} tokens > --max-length {cfg.max_length}, dropped"
            )
        else:
            kept.append(enc)
    return kept, dropped


def batches(encoded: list, cfg: TrainConfig, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps, each a list of micro-batches of example indices.

    Length-grouped: shuffle, then sort within windows of 8 steps' worth of examples, so a
    micro-batch holds examples of similar length (little padding) while order stays random.
    A short last step (fewer examples than --batch-size) stays last, as in a DataLoader.
    """
    rng = random.Random(cfg.seed * 1000 + epoch)
    idx = list(range(len(encoded)))
    rng.shuffle(idx)
    window = cfg.batch_size * 8
    ordered: list[int] = []
    for s in range(0, len(idx), window):
        ordered += sorted(idx[s : s + window], key=lambda i: len(encoded[i].input_ids))
    steps = [ordered[s : s + cfg.batch_size] for s in range(0, len(ordered), cfg.batch_size)]
    short = steps.pop() if steps and len(steps[-1]) < cfg.batch_size else None
    rng.shuffle(steps)
    if short:
        steps.append(short)
    budget = pass_budget(encoded, cfg)
    return [micro_batches(encoded, step, cfg, budget) for step in steps]


def pass_budget(encoded: list, cfg: TrainConfig) -> int:
    """row_budget for the longest example of `encoded`; 0 where passes hold a fixed number of examples."""
    return row_budget(max(len(e.input_ids) for e in encoded), cfg) if encoded else 0


def row_budget(longest: int, cfg: TrainConfig) -> int:
    """token_budget, given the longest example's `longest` tokens: for packed rows at least its padded
    width (a row holds whole examples), for padded rows at most that (no pass holds more tokens than that
    example alone); 0 where passes hold a fixed number of examples."""
    if not token_budget(cfg):
        return 0
    width = padded_width(longest, bucket_size(cfg))
    return max(token_budget(cfg), width) if packing(cfg) else min(token_budget(cfg), width)


def micro_batches(encoded: list, idx: list[int], cfg: TrainConfig, budget: int) -> list[list[int]]:
    """Split one step's examples `idx` into forward passes: --micro-batch-size examples each, or with a
    `budget` (pass_budget) as many examples of similar length as fit in that many padded tokens."""
    if not budget:
        return [idx[m : m + cfg.micro_batch_size] for m in range(0, len(idx), cfg.micro_batch_size)]
    bucket = bucket_size(cfg)
    if packing(cfg):
        return packs(encoded, idx, budget, bucket)
    out: list[list[int]] = []
    width = 0
    for i in sorted(idx, key=lambda i: len(encoded[i].input_ids)):
        w = padded_width(len(encoded[i].input_ids), bucket)
        if out and max(width, w) * (len(out[-1]) + 1) <= budget:
            out[-1].append(i)
            width = max(width, w)
        else:
            out.append([i])
            width = w
    return out


def packs(encoded: list, idx: list[int], budget: int, bucket: int) -> list[list[int]]:
    """The examples `idx` as rows of whole examples, each at most `budget` tokens once padded to a multiple
    of `bucket`: first fit, longest first (few rows, each nearly full)."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(idx, key=lambda i: -len(encoded[i].input_ids)):
        n = len(encoded[i].input_ids)
        r = next((r for r, u in enumerate(used) if padded_width(u + n, bucket) <= budget), len(rows))
        if r == len(rows):
            rows.append([])
            used.append(0)
        rows[r].append(i)
        used[r] += n
    return rows


def padded_width(n: int, bucket: int) -> int:
    """`n` tokens rounded up to a multiple of `bucket` (0: not rounded): a row's width in a batch."""
    return -(-n // bucket) * bucket if bucket else n


def collate(encoded: list, idx: list[int], pad_id: int, bucket: int = 0):
    """Right-padded ids, attention mask and labels of the examples `idx`.

    With `bucket`, the width is rounded up to a multiple of it and the mask is all ones: in a
    causal model no real token looks right, so right padding needs no mask (its positions are
    never targets), and the attention can take its unmasked fast path. Why round at all: on a
    CPU every new sequence length makes oneDNN build and cache new matmul kernels (with their
    own buffers) and fragments the heap; with every example a different length, bf16 training's
    peak RSS on the example data grew to ~3.4 GB where one sequence needs ~1.4 GB. Widths in
    steps of 64 measured 2.7 GB at the same speed (the padding's ~7 % more tokens cost about
    what the fewer distinct shapes save)."""
    import torch

    width = padded_width(max(len(encoded[i].input_ids) for i in idx), bucket)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.full((len(idx), width), 1 if bucket else 0, dtype=torch.long)
    for r, i in enumerate(idx):
        n = len(encoded[i].input_ids)
        ids[r, :n] = torch.tensor(encoded[i].input_ids)
        labels[r, :n] = torch.tensor(encoded[i].labels)
        mask[r, :n] = 1
    return ids, mask, labels


def collate_packed(encoded: list, idx: list[int], pad_id: int, bucket: int = 0):
    """The examples `idx` end to end in one row, right-padded to a multiple of `bucket`: ids, labels and
    each example's (start, end) bounds (the padding goes with the last). Each example's first label is
    dropped: it would be predicted from the example before."""
    import torch

    total = sum(len(encoded[i].input_ids) for i in idx)
    width = padded_width(total, bucket)
    ids = torch.full((1, width), pad_id, dtype=torch.long)
    labels = torch.full((1, width), IGNORE, dtype=torch.long)
    segments, p = [], 0
    for i in idx:
        n = len(encoded[i].input_ids)
        ids[0, p : p + n] = torch.tensor(encoded[i].input_ids)
        labels[0, p + 1 : p + n] = torch.tensor(encoded[i].labels[1:])
        segments.append((p, p + n))
        p += n
    segments[-1] = (segments[-1][0], width)
    return ids, labels, tuple(segments)


def pass_tensors(encoded: list, idx: list[int], pad_id: int, cfg: TrainConfig):
    """One forward pass's ids, attention mask (None when packed), labels and packed bounds (or None)."""
    if packing(cfg):
        ids, labels, segments = collate_packed(encoded, idx, pad_id, bucket_size(cfg))
        return ids, None, labels, segments
    return (*collate(encoded, idx, pad_id, bucket_size(cfg)), None)


def n_answer_tokens(encoded, idx) -> int:
    # labels are shifted by one for prediction; the first token never is a target
    return sum(sum(1 for x in encoded[i].labels[1:] if x != IGNORE) for i in idx)
