"""Chat examples -> token ids and labels, through the model's own chat template.

One rule shared by training and generation: the prompt is the template rendered up to the
generation prompt, the answer is what the template adds for the assistant turn (content
plus its end-of-turn marker). Training sees exactly the tokens generation will see, and
labels are -100 everywhere except on answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100

# Used only when a tokenizer has no chat template of its own.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# End-of-turn markers used by common chat templates; generation stops at any that exist.
END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot_id|>", "<|endoftext|>", "</s>")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_answer(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def last_assistant(messages: list[dict]) -> int:
    """Index of the last assistant turn: the answer training learns last and evaluation scores."""
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def split_prompt(messages: list[dict], system: str | None = None) -> tuple[list[dict], str]:
    """(the conversation up to the last answer, that answer); `system` replaces any system turn."""
    last = last_assistant(messages)
    prompt = list(messages[:last])
    if system is not None:
        prompt = [m for m in prompt if m["role"] != "system"]
        prompt.insert(0, {"role": "system", "content": system})
    return prompt, messages[last]["content"]


def render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    template = tokenizer.chat_template or FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=template
    )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a text with BOS (what an exported GGUF tells llama.cpp to do)."""
    probe = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id


def _needs_bos(tokenizer, first_ids: list[int]) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None or (first_ids and first_ids[0] == bos):
        return False
    return adds_bos(tokenizer)


def end_of_turn_markers(tokenizer) -> dict[str, int]:
    """The END_OF_TURN markers in the tokenizer's vocabulary, token -> id. Cached on the tokenizer (for its
    vocabulary size): get_vocab() builds a dict of the whole vocabulary, 18 ms for SmolLM2's 49,152, and
    was called 8 times per example, 93 % of encoding time (72 s of setup for 500 DialogSum chats)."""
    size = len(tokenizer)
    cached = tokenizer.__dict__.get("_tunesmith_markers")
    if cached is None or cached[0] != size:
        vocab = tokenizer.get_vocab()
        cached = (size, {t: vocab[t] for t in END_OF_TURN if t in vocab})
        tokenizer.__dict__["_tunesmith_markers"] = cached
    return cached[1]


def stop_token_ids(tokenizer) -> list[int]:
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    for i in end_of_turn_markers(tokenizer).values():
        if i not in ids:
            ids.append(i)
    return ids


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of the conversation so far plus the generation prompt."""
    ids = _ids(tokenizer, render(tokenizer, messages, True))
    if _needs_bos(tokenizer, ids):
        ids = [tokenizer.bos_token_id] + ids
    return ids


def rendered_lengths(tokenizer, conversations: list[list[dict]]) -> list[int]:
    """Token counts of whole chats, tokenized in one batch (the fast path of `data check`)."""
    texts = [render(tokenizer, c, False) for c in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bos = [int(_needs_bos(tokenizer, x)) for x in ids]
    return [len(x) + b for x, b in zip(ids, bos)]


def encode_chat(tokenizer, messages: list[dict], train_on: str = "all") -> Encoded:
    """Tokenize a chat; labels mark the assistant turns (`all`, or only the `last`)."""
    full = render(tokenizer, messages, False)
    assistant_idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_idx:
        raise ValueError("example has no assistant turn")
    if train_on == "last":
        assistant_idx = assistant_idx[-1:]
    stops = set(stop_token_ids(tokenizer))
    markers = list(end_of_turn_markers(tokenizer))
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for i in assistant_idx:
        before = render(tokenizer, messages[:i], True)
        answer = render(tokenizer, messages[: i + 1], False)[len(before) :]
        # The answer ends at its first end-of-turn marker; what a template adds after it
        # (a newline, or an EOS only at the very end of a chat) belongs to the context.
        content_at = answer.find(messages[i]["content"])
        search_from = content_at + len(messages[i]["content"]) if content_at >= 0 else 0
        ends = [answer.find(t, search_from) + len(t) for t in markers if answer.find(t, search_from) >= 0]
        answer = answer[: min(ends)] if ends else answer
        if not (full.startswith(before) and full.startswith(answer, len(before))):
            raise ValueError(
                "the chat template renders earlier turns differently once later turns are added; "
                "use train_on='last' for this model"
            )
        ctx = _ids(tokenizer, full[cursor : len(before)])
        ans = _ids(tokenizer, answer)
        end = next((k for k, t in enumerate(ans) if t in stops), None)
        if end is None:
            # Templates without an end-of-turn marker: append EOS so the model learns to stop.
            ans, after = ans + [tokenizer.eos_token_id], []
        else:
            ans, after = ans[: end + 1], ans[end + 1 :]
        input_ids += ctx + ans + after
        labels += [IGNORE] * len(ctx) + ans + [IGNORE] * len(after)
        cursor = len(before) + len(answer)
    tail = _ids(tokenizer, full[cursor:])
    input_ids += tail
    labels += [IGNORE] * len(tail)
    if _needs_bos(tokenizer, input_ids):
        input_ids = [tokenizer.bos_token_id] + input_ids
        labels = [IGNORE] + labels
    return Encoded(input_ids, labels)
