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
    """Index of the last assistant turn: the answer training learns last and evaluation scores; for a
    prompt-only row (a reinforcement-tuning file's: no answer, graders score it) the end of the list."""
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))


def learned_turns(messages: list[dict]) -> list[int]:
    """The assistant turns training learns: all of them but those of weight 0 (a hosted fine-tuning file's
    way to keep a turn as context only)."""
    return [i for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("weight", 1) != 0]


def split_prompt(messages: list[dict], system: str | None = None) -> tuple[list[dict], str]:
    """(the conversation up to the last answer, that answer); `system` replaces any system turn."""
    last = last_assistant(messages)
    prompt = list(messages[:last])
    if system is not None:
        prompt = [m for m in prompt if m["role"] != "system"]
        prompt.insert(0, {"role": "system", "content": system})
    return prompt, messages[last]["content"] if last < len(messages) else ""


def render(tokenizer, messages, add_generation_prompt: bool = False, tools: list | None = None) -> str:
    """The chat as the model's template writes it (`tools`: the function definitions, for the templates
    that put them in the prompt)."""
    template = tokenizer.chat_template or FALLBACK_TEMPLATE
    return tokenizer.apply_chat_template(
        messages,
        tools=tools,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        chat_template=template,
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


def rendered_lengths(tokenizer, conversations: list[list[dict]], tools: list | None = None) -> list[int]:
    """Token counts of whole chats, tokenized in one batch (the fast path of `data check`); `tools`: each
    chat's tool definitions (or None)."""
    return text_lengths(tokenizer, rendered_texts(tokenizer, conversations, tools))


def rendered_texts(tokenizer, conversations: list[list[dict]], tools: list | None = None) -> list[str]:
    """The chats as the template writes them (Python, under the GIL): the first half of rendered_lengths."""
    return [rendered(tokenizer, c, t) for c, t in zip(conversations, tools or [None] * len(conversations))]


def text_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of rendered chats, a BOS counted where the tokenizer adds one: the second half of
    rendered_lengths, nearly all in the Rust backend, which lets other Python threads run meanwhile."""
    bos = tokenizer.bos_token_id
    adds = bos is not None and adds_bos(tokenizer)
    return [n + int(adds and first != bos) for first, n in _first_and_length(tokenizer, texts)]


def _first_and_length(tokenizer, texts: list[str]) -> list[tuple[int | None, int]]:
    """Each text's first token id and token count, without special tokens added. A fast tokenizer's Rust
    backend is asked directly (encode_batch_fast: no character offsets, no Python lists of every id, texts
    spread over the cores), unless its tokenizer.json sets truncation or padding, which transformers' call
    switches off and a direct call would apply."""
    backend = getattr(tokenizer, "_tokenizer", None)
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is not None and backend.truncation is None and backend.padding is None:
        return [(e.ids[0] if len(e) else None, len(e)) for e in fast(texts, add_special_tokens=False)]
    return [(x[0] if x else None, len(x)) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_chat(tokenizer, messages: list[dict], train_on: str = "all", tools: list | None = None) -> Encoded:
    """Tokenize a chat; labels mark the learned assistant turns (`all`, or only the `last`). A turn of tool
    calls is learned as the template writes it; a tool's result is context."""
    full = render(tokenizer, messages, False, tools)
    assistant_idx = learned_turns(messages)
    if not assistant_idx:
        raise ValueError("example has no assistant turn to learn (none, or all of weight 0)")
    if train_on == "last":
        assistant_idx = assistant_idx[-1:]
    stops = set(stop_token_ids(tokenizer))
    markers = list(end_of_turn_markers(tokenizer))
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for i in assistant_idx:
        before = render(tokenizer, messages[:i], True, tools)
        answer = render(tokenizer, messages[: i + 1], False, tools)[len(before) :]
        missing = [
            c["function"]["name"]
            for c in messages[i].get("tool_calls") or []
            if c["function"]["name"] not in answer
        ]
        if missing:
            raise ValueError(
                f"the model's chat template does not write tool calls ({missing[0]} is not in the "
                "text it renders); train tool calls on a model whose template knows tools (Qwen2.5, Qwen3, "
                "Llama 3.1+)"
            )
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


# ------------------------------------------------- the template rendered once per sequence of roles
# Rendering a chat template is Jinja: 29 us a chat for SmolLM2's template on `benchmarks/data_check.py`'s
# 1.2 KB chats, against 3.4 us spliced (measured on the 2-core EPYC; tokenizing the text, 160 us, is what
# remains of `data check --max-length`). The templates of the families we train put a fixed text around each
# content, so each sequence of roles is rendered once with marker contents and the chats of that shape are
# spliced: the same text, checked on a second spelling of the markers (longer, mixed case) and on contents
# with whitespace at their ends (which some templates trim); any other template is rendered per chat.
_MARKS = (
    "\u27e6{}\u27e7",
    "\u27e6tunesmith marker, Number {} of this chat \u27e7",
)  # short, long and mixed case
_PAD = " \n"


def cut_at(text: str, parts: list[str]) -> list[str] | None:
    """The texts between `parts`, which must occur in `text` in this order: [before, between..., after]."""
    out, at = [], 0
    for p in parts:
        k = text.find(p, at)
        if k < 0:
            return None
        out.append(text[at:k])
        at = k + len(p)
    return [*out, text[at:]]


def _splice(pieces: list[str], contents: list[str]) -> str:
    return "".join(p + c for p, c in zip(pieces, contents)) + pieces[-1]


def _marked(tokenizer, roles: tuple[str, ...], mark: str, pad: str = "") -> tuple[str, list[str]]:
    contents = [pad + mark.format(k) + pad for k in range(len(roles))]
    return render(tokenizer, [{"role": r, "content": c} for r, c in zip(roles, contents)]), contents


def template_pieces(tokenizer, roles: tuple[str, ...]) -> tuple[list[str], tuple[bool, ...]] | None:
    """The fixed texts the chat template puts around each content for this sequence of roles, and which
    contents it strips; None when its text depends on more than the roles. Cached on the tokenizer."""
    cache = tokenizer.__dict__.setdefault("_tunesmith_pieces", {})
    key = (roles, tokenizer.chat_template)
    if key not in cache:
        cache[key] = None
        try:
            text, contents = _marked(tokenizer, roles, _MARKS[0])
            pieces = cut_at(text, contents)
            other, others = _marked(tokenizer, roles, _MARKS[1])
            padded, pads = _marked(tokenizer, roles, _MARKS[0], _PAD)
        except Exception:  # noqa: BLE001 -- a template that refuses marker contents is rendered per chat
            pieces = None
        if pieces is not None and _splice(pieces, others) == other:
            strips = tuple(p not in padded for p in pads)
            if _splice(pieces, [p.strip() if s else p for p, s in zip(pads, strips)]) == padded:
                cache[key] = (pieces, strips)
    return cache[key]


def rendered(tokenizer, messages: list[dict], tools: list | None = None) -> str:
    """render(tokenizer, messages): spliced from the template's pieces where that gives the same text.
    Contents holding "<" (a tag a template might look for, like Qwen3's </think>) or that are not plain
    strings are rendered by the template itself."""
    contents = [m.get("content") for m in messages]
    plain = tools is None and all(m["role"] != "tool" and not m.get("tool_calls") for m in messages)
    if plain and all(isinstance(c, str) and "<" not in c for c in contents):
        found = template_pieces(tokenizer, tuple(m["role"] for m in messages))
        if found is not None:
            pieces, strips = found
            return _splice(pieces, [c.strip() if s else c for c, s in zip(contents, strips)])
    return render(tokenizer, messages, tools=tools)
