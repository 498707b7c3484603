"""Loss on the answer only: label masks checked token by token for every chat-template family."""

import pytest
from conftest import FAMILIES, make_tokenizer

from tunesmith.chat import IGNORE, encode_chat, prompt_ids

END = {"llama": "<|im_end|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "gemma3": "<end_of_turn>", "phi3": "<|end|>"}

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
