"""Loss on the answer only: label masks checked token by token for every chat-template family."""

import pytest

from conftest import FAMILIES, make_tokenizer
from tunesmith.models.chat import IGNORE, encode_chat, prompt_ids

END = {
    "llama": "<|im_end|>",
    "qwen2": "<|im_end|>",
    "qwen3": "<|im_end|>",
    "gemma3": "<end_of_turn>",
    "phi3": "<|end|>",
    "phi4mini": "<|end|>",
    "llama32": "<|eot_id|>",
}

TWO_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hello world"},
]


def labelled_spans(enc):
    """Decode each maximal run of labelled tokens separately."""
    spans, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == t, "a label must be the token itself (shifting happens in the loss)"
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return spans


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_single_turn_mask_is_answer_plus_end_marker(family):
    tok = make_tokenizer(family)
    msgs = TWO_TURNS[:2]
    enc = encode_chat(tok, msgs)
    spans = labelled_spans(enc)
    assert [tok.decode(s) for s in spans] == ["Paris is the capital." + END[family]]
    # everything before the answer is exactly the generation prompt the model sees at inference
    p = prompt_ids(tok, msgs[:1])
    assert enc.input_ids[: len(p)] == p
    assert all(lab == IGNORE for lab in enc.labels[: len(p)])
    assert enc.labels[len(p)] != IGNORE
    # the end-of-turn token is learned, so the tuned model stops by itself
    assert tok.convert_ids_to_tokens(spans[-1][-1]) == END[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_multi_turn_all_or_last(family):
    tok = make_tokenizer(family)
    every = [tok.decode(s) for s in labelled_spans(encode_chat(tok, TWO_TURNS, "all"))]
    assert every == ["Paris is the capital." + END[family], "hello world" + END[family]]
    last = [tok.decode(s) for s in labelled_spans(encode_chat(tok, TWO_TURNS, "last"))]
    assert last == ["hello world" + END[family]]
    # same tokens either way; only the labels differ
    assert encode_chat(tok, TWO_TURNS, "all").input_ids == encode_chat(tok, TWO_TURNS, "last").input_ids


def test_system_prompt_is_context_not_answer():
    tok = make_tokenizer("llama")
    msgs = [{"role": "system", "content": "Be brief."}] + TWO_TURNS[:2]
    enc = encode_chat(tok, msgs)
    assert [tok.decode(s) for s in labelled_spans(enc)] == ["Paris is the capital.<|im_end|>"]
    assert "Be brief." in tok.decode(enc.input_ids)


def test_no_assistant_turn_is_an_error():
    with pytest.raises(ValueError, match="no assistant turn"):
        encode_chat(make_tokenizer("llama"), TWO_TURNS[:1])


def test_end_of_turn_markers_are_looked_up_once_per_vocabulary(monkeypatch):
    """get_vocab() builds a dict of the whole vocabulary; encoding used to call it 8 times per example
    (72 s of a DialogSum run's setup). Now once per tokenizer, again only when tokens are added."""
    from tunesmith.models.chat import stop_token_ids

    tok = make_tokenizer("llama")
    calls = []
    real = type(tok).get_vocab
    monkeypatch.setattr(type(tok), "get_vocab", lambda self: calls.append(1) or real(self))
    first = [encode_chat(tok, TWO_TURNS) for _ in range(20)]
    assert len(calls) == 1
    assert all(e.input_ids == first[0].input_ids and e.labels == first[0].labels for e in first)
    before = stop_token_ids(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in before
    tok.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})  # a marker the vocabulary lacked
    after = stop_token_ids(tok)
    assert len(calls) == 2 and set(after) == set(before) | {tok.convert_tokens_to_ids("<end_of_turn>")}
    assert len(after) == len(before) + 1


# ------------------------------------------------------------ the template rendered once per role sequence

SHAPES = [
    ["user", "assistant"],
    ["system", "user", "assistant"],
    ["user", "assistant", "user", "assistant"],
    ["system", "user", "assistant", "user", "assistant", "user", "assistant"],
]
CONTENTS = [
    "Write the meeting notes.",
    "  padded at both ends \n",
    "two\nlines, {braces} and {{ jinja }}, 'quotes' \"too\"",
    "Ünïcödé — ok",
    "\n",
    "x",
]


@pytest.mark.parametrize("family", [*sorted(FAMILIES), "llama3", "gemma3-system", "qwen2.5"])
def test_splicing_the_templates_pieces_gives_the_rendered_chat(family):
    """What `data check --max-length` counts: the chat spliced from the pieces of its role sequence equals the
    template's own rendering, for every family's template (some trim contents, some add a default system
    turn, Gemma folds the system prompt into the first turn), on contents with whitespace at their ends."""
    import random

    from test_modelfile import family_tokenizer
    from tunesmith.models.chat import render, rendered, template_pieces

    tok = (
        family_tokenizer(family)
        if family in ("llama3", "gemma3-system", "qwen2.5")
        else make_tokenizer(family)
    )
    rng = random.Random(0)
    for shape in SHAPES:
        for _ in range(4):
            chat = [{"role": r, "content": rng.choice(CONTENTS)} for r in shape]
            assert rendered(tok, chat) == render(tok, chat), (family, chat)
    assert template_pieces(tok, ("user", "assistant")) is not None, "the fast path is used"


def test_a_template_that_reads_the_content_is_rendered_per_chat():
    from tunesmith.models.chat import render, rendered, template_pieces

    tok = make_tokenizer("llama")
    tok.chat_template = (
        "{% for m in messages %}{% if m['content'] | length > 12 %}LONG {% endif %}{{ m['content'] | upper }}"
        "\n{% endfor %}"
    )
    chat = [{"role": "user", "content": "short"}, {"role": "assistant", "content": "a longer answer here"}]
    assert template_pieces(tok, ("user", "assistant")) is None
    assert rendered(tok, chat) == render(tok, chat) == "SHORT\nLONG A LONGER ANSWER HERE\n"
    think = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>x</think>a"}]
    tok.chat_template = "{% for m in messages %}{{ m['content'].split('</think>')[-1] }}|{% endfor %}"
    assert rendered(tok, think) == render(tok, think) == "q|a|"  # "<" in a content: the template renders it


@pytest.mark.parametrize("family", ["qwen2", "llama32", "gemma3"])
def test_token_counts_of_data_check_equal_the_training_encoding(family):
    """`data check --max-length` counts through the fast tokenizer's backend (rendered_lengths): the same
    count as the training encoding (BOS included where the tokenizer adds one: Llama 3.2, Gemma 3; Qwen 2
    has none), and the same when the tokenizer.json asks for truncation, which transformers' call switches
    off."""
    from tunesmith.models.chat import rendered_lengths

    tok = make_tokenizer(family)
    chats = [TWO_TURNS, TWO_TURNS[:2], [{"role": "user", "content": "word " * 300}, TWO_TURNS[1]]]
    want = [len(encode_chat(tok, c).input_ids) for c in chats]
    assert rendered_lengths(tok, chats) == want and want[2] > 300
    tok._tokenizer.enable_truncation(16)
    assert rendered_lengths(tok, chats) == want
