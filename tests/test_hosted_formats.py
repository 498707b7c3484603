"""Files written for hosted fine-tuning (OpenAI's formats), read as they are: an assistant message's
`weight` (0 keeps a turn as context, out of the loss) and preference pairs as input / preferred_output /
non_preferred_output. The records are the published documentation's own examples."""

from __future__ import annotations

import json

import pytest

from conftest import cli, make_tokenizer, write_jsonl
from tunesmith.data.formats import load_examples
from tunesmith.data.shapes import normalize
from tunesmith.models.chat import IGNORE, encode_chat

# OpenAI's fine-tuning guide, multi-turn chat with weights: the first answer stays out of the loss
MARV = {
    "messages": [
        {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
        {"role": "user", "content": "What's the capital of France?"},
        {"role": "assistant", "content": "Paris", "weight": 0},
        {"role": "user", "content": "Can you be more sarcastic?"},
        {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
    ]
}
# OpenAI's direct preference optimization guide
SF = {
    "input": {
        "messages": [{"role": "user", "content": "Hello, can you tell me how cold San Francisco is today?"}],
        "tools": [],
        "parallel_tool_calls": True,
    },
    "preferred_output": [
        {
            "role": "assistant",
            "content": "Today in San Francisco, it is not quite cold as expected. Morning clouds will give "
            "away to sunny skies by noon.",
        }
    ],
    "non_preferred_output": [
        {"role": "assistant", "content": "It is not particularly cold in San Francisco today."}
    ],
}


def test_a_weighted_chat_keeps_its_weights_and_the_loss_skips_weight_0():
    ex, problems = normalize(MARV)
    assert problems == [] and [m.get("weight") for m in ex.messages] == [None, None, 0, None, None]
    tok = make_tokenizer("llama")
    enc = encode_chat(tok, ex.messages)
    learned = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE])
    assert "as if everyone doesn't know that already" in learned and "Paris," in learned
    assert learned.count("Paris") == 1  # the weight-0 answer "Paris" is context only
    unweighted = encode_chat(tok, [{k: v for k, v in m.items() if k != "weight"} for m in ex.messages])
    assert unweighted.input_ids == enc.input_ids  # the same text; only the labels differ
    assert sum(x != IGNORE for x in unweighted.labels) > sum(x != IGNORE for x in enc.labels)


@pytest.mark.parametrize(
    "message, field, says",
    [
        (
            {"role": "assistant", "content": "Paris", "weight": 2},
            "messages[2].weight",
            "expected 0 or 1, got 2",
        ),
        ({"role": "assistant", "content": "Paris", "weight": True}, "messages[2].weight", "got True"),
        ({"role": "assistant", "content": "Paris", "weight": "0"}, "messages[2].weight", "got '0'"),
    ],
)
def test_a_bad_weight_is_an_error_naming_the_field(message, field, says):
    rec = {"messages": [*MARV["messages"][:2], message, *MARV["messages"][3:]]}
    ex, problems = normalize(rec)
    assert (
        ex is None and [(lvl, f) for lvl, f, _ in problems] == [("error", field)] and says in problems[0][2]
    )
    on_user = {
        "messages": [{"role": "user", "content": "Hi", "weight": 1}, {"role": "assistant", "content": "Hey"}]
    }
    _, problems = normalize(on_user)
    assert ("error", "messages[0].weight", "only an assistant message has a weight") in problems


def test_all_weight_0_is_a_warning_and_training_drops_it_with_its_line(tmp_path, tiny_model_dir):
    rec = {"messages": [MARV["messages"][1], {**MARV["messages"][2]}]}
    ex, problems = normalize(rec)
    assert ex is not None and problems == [
        ("warning", "messages", "every assistant turn has weight 0: training learns nothing from it")
    ]
    data = write_jsonl(tmp_path / "train.jsonl", [MARV] * 7 + [rec])
    flags = ["--epochs", "1", "--batch-size", "4", "--registry", "off", "--json", "--threads", "1"]
    model, out = str(tiny_model_dir("llama")), str(tmp_path / "run")
    r = cli("train", "--model", model, "--data", str(data), "--out", out, *flags)
    assert r.returncode == 0, r.stderr
    assert f"{data}:8: every assistant turn has weight 0, nothing to learn; dropped" in r.stdout + r.stderr
    assert json.loads(r.stdout[r.stdout.index("{") :])["examples"] == 7


def test_a_hosted_preference_pair_becomes_a_preference_example(tmp_path):
    ex, problems = normalize(SF)
    assert problems == [] and ex.kind == "preference"
    assert ex.messages == [
        SF["input"]["messages"][0],
        {"role": "assistant", "content": SF["preferred_output"][0]["content"]},
    ]
    assert ex.rejected == SF["non_preferred_output"][0]["content"]
    path = write_jsonl(tmp_path / "dpo.jsonl", [SF])
    [read] = load_examples(path, kind=None)
    assert read.rejected == ex.rejected and read.messages == ex.messages
    r = cli("data", "check", str(path), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and (report["examples"], report["errors"]) == (1, 0), r.stdout
    assert [i["message"] for i in report["issues"]] == [
        "only 1 example; fine-tuning usually needs 100+ to help"
    ]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.update(input={"messages": [], "tools": [{"type": "function"}]}), "input.tools"),
        (lambda r: r.update(input="hello"), "input"),
        (lambda r: r["preferred_output"].append({"role": "assistant", "content": "x"}), "preferred_output"),
        (lambda r: r["non_preferred_output"][0].update(role="user"), "non_preferred_output[0].role"),
        (lambda r: r["preferred_output"][0].update(tool_calls=[]), "preferred_output[0].tool_calls"),
        (lambda r: r.update(non_preferred_output=r["preferred_output"]), "non_preferred_output"),
        (lambda r: r["input"]["messages"].append({"role": "assistant", "content": "x"}), "input.messages"),
    ],
)
def test_a_bad_hosted_preference_pair_names_its_field(change, field):
    rec = json.loads(json.dumps(SF))
    change(rec)
    ex, problems = normalize(rec)
    assert ex is None and field in [f for lvl, f, _ in problems if lvl == "error"], problems


def test_dpo_trains_on_a_hosted_preference_file(tmp_path, tiny_model_dir):
    rows = []
    for i in range(12):
        pair = json.loads(json.dumps(SF))
        pair["input"]["messages"][0]["content"] += f" (day {i})"
        rows.append(pair)
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    flags = ["--epochs", "1", "--batch-size", "4", "--registry", "off", "--json", "--threads", "1"]
    model, out = str(tiny_model_dir("llama")), str(tmp_path / "dpo")
    r = cli(
        "train",
        "--method",
        "dpo",
        "--allow-few-pairs",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        out,
        *flags,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout[r.stdout.index("{") :])
    # 11 pairs trained, 1 held out (10 %, no validation file); the held-out pair's loss falls from log 2
    assert res["method"] == "dpo" and res["examples"] == 11 and res["steps"] == 3
    assert res["val_start"]["val_loss"] == pytest.approx(0.693147) and res["val"][-1]["val_loss"] < 0.69


# ---------------------------------------------------------------- stored completions -> a review queue


def stored(i: int, topic: str, answer: str | None = None) -> dict:
    """A stored chat completion as the API's reference shows one (GET /v1/chat/completions/ID), with the
    stored-messages route's answer (GET .../ID/messages) beside it under "messages"."""
    return {
        "id": f"chatcmpl-abc{i}",
        "object": "chat.completion",
        "created": 1738960610,
        "model": "gpt-4.1-mini-2025-04-14",
        "request_id": "req_ded8ab984ec4bf840f37566c1011c417",
        "tool_choice": None,
        "seed": 4944116822809979520,
        "top_p": 1.0,
        "temperature": 1.0,
        "system_fingerprint": "fp_50cad350e4",
        "service_tier": "default",
        "tools": None,
        "metadata": {"topic": topic},
        "usage": {"total_tokens": 31, "completion_tokens": 18, "prompt_tokens": 13},
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {
                    "content": answer or f"Mind of circuits hum {i}",
                    "role": "assistant",
                    "tool_calls": None,
                    "function_call": None,
                },
            }
        ],
        "messages": {
            "object": "list",
            "data": [
                {
                    "id": f"chatcmpl-abc{i}-0",
                    "role": "user",
                    "content": f"write a haiku about {topic} {i}",
                    "name": None,
                    "content_parts": None,
                }
            ],
            "first_id": f"chatcmpl-abc{i}-0",
            "last_id": f"chatcmpl-abc{i}-0",
            "has_more": False,
        },
    }


def test_stored_completions_become_a_review_queue_filtered_by_metadata_then_training_data(tmp_path):
    from tunesmith.registry.db import Registry
    from tunesmith.review import store
    from tunesmith.review.store import Judgement

    f = write_jsonl(
        tmp_path / "stored.jsonl",
        [
            stored(1, "billing"),
            stored(2, "ai"),
            stored(3, "billing"),
            {
                "messages": [
                    {"role": "user", "content": "dashboard export"},
                    {"role": "assistant", "content": "a chat example"},
                ],
                "metadata": {"topic": "billing"},
            },
        ],
    )
    reg_path = str(tmp_path / "reg.db")
    r = cli("review", "--registry", reg_path, "add", "--captures", str(f), "--metadata", "topic=billing")
    assert r.returncode == 0, r.stderr
    assert "queue stored-stored: 3 items, outputs answer" in r.stdout
    reg = Registry(reg_path)
    its = store.items(reg, "stored-stored")
    assert [i["prompt"] for i in its] == [
        [{"role": "user", "content": "write a haiku about billing 1"}],
        [{"role": "user", "content": "write a haiku about billing 3"}],
        [{"role": "user", "content": "dashboard export"}],
    ]
    assert its[0]["outputs"]["answer"] == {
        "output": "Mind of circuits hum 1",
        "model": "gpt-4.1-mini-2025-04-14",
        "metadata": {"topic": "billing"},
    }
    store.record(reg, Judgement(item=its[0]["id"], reviewer="ann", kind="accept", label="answer"))
    store.record(
        reg, Judgement(item=its[1]["id"], reviewer="ann", kind="correction", label="answer", text="Fixed.")
    )
    sft = tmp_path / "sft.jsonl"
    r = cli("review", "--registry", reg_path, "export", "--sft", str(sft), "--queue", "stored-stored")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["messages"][-1]["content"] for x in sft.read_text().splitlines()] == [
        "Mind of circuits hum 1",
        "Fixed.",
    ]
    r = cli(
        "review",
        "--registry",
        reg_path,
        "add",
        "--captures",
        str(f),
        "--metadata",
        "model=gpt-4.1-mini-2025-04-14",
        "--name",
        "by-model",
    )
    assert r.returncode == 0 and "queue by-model: 3 items" in r.stdout, r.stderr
    tool = stored(4, "x")
    tool["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "function"}],
    }
    no_msgs = {k: v for k, v in stored(5, "x").items() if k != "messages"}
    for rows, said in [
        (
            [tool],
            f"{tmp_path / 'bad.jsonl'}:1: choices[0].message.tool_calls: a tool call, not a text answer",
        ),
        (
            [no_msgs],
            f"{tmp_path / 'bad.jsonl'}:1: messages: missing; a stored completion needs its request's",
        ),
        ([stored(6, "ai")], f"review add --captures {tmp_path / 'bad.jsonl'}: none of its 1 completions has"),
    ]:
        bad = write_jsonl(tmp_path / "bad.jsonl", rows)
        r = cli(
            "review",
            "--registry",
            reg_path,
            "add",
            "--captures",
            str(bad),
            "--metadata",
            "topic=billing",
            "--name",
            "x",
        )
        assert r.returncode == 2 and r.stderr.startswith(f"error: {said}"), r.stderr
    r = cli("review", "--registry", reg_path, "add", "--captures", "--metadata", "topic=x")
    assert r.returncode == 2 and "--metadata goes with --captures FILE" in r.stderr


# ---------------------------------------------------------------- tool calls

# A chat template that knows tools, in the manner of Qwen2.5's (written for these tests): the definitions
# in a system turn, each call as <tool_call>{json}</tool_call> in the assistant's turn, results as tool turns.
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    '{%- for c in m.tool_calls or [] %}<tool_call>{"name": "{{ c.function.name }}", "arguments": '
    "{{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}},
                "required": ["location"],
            },
        },
    }
]


def weather_row(city: str = "San Francisco", degrees: str = "21.0") -> dict:
    """The hosted guide's function-calling example (a weather tool), for one city."""
    return {
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_id",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": json.dumps({"location": f"{city}, USA", "format": "celsius"}),
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_id", "content": degrees},
            {"role": "assistant", "content": f"It is {degrees[:-2]} degrees celsius in {city}"},
        ],
        "tools": WEATHER_TOOLS,
        "parallel_tool_calls": False,
    }


def test_a_hosted_tool_calling_example_learns_the_calls_not_the_results():
    ex, problems = normalize(weather_row())
    assert problems == []
    assert ex.tools == WEATHER_TOOLS and "tools" not in ex.meta and "parallel_tool_calls" not in ex.meta
    assert ex.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_id",
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "arguments": {"location": "San Francisco, USA", "format": "celsius"},
                },
            }
        ],
    }
    assert ex.messages[2] == {"role": "tool", "content": "21.0", "tool_call_id": "call_id"}
    tok = make_tokenizer("qwen2")
    tok.chat_template = TOOL_TEMPLATE
    enc = encode_chat(tok, ex.messages, "all", ex.tools)
    learned = tok.decode([t for t in enc.labels if t != IGNORE])
    args = '{"location": "San Francisco, USA", "format": "celsius"}'
    call = f'{{"name": "get_current_weather", "arguments": {args}}}'
    assert (
        learned
        == f"<tool_call>{call}</tool_call><|im_end|>It is 21 degrees celsius in San Francisco<|im_end|>"
    )
    whole = tok.decode(enc.input_ids)
    assert '"name": "get_current_weather", "description"' in whole  # the definitions are in the prompt
    assert "<|im_start|>tool\n21.0<|im_end|>" in whole  # the result is context, not learned
    tok.chat_template = None  # the fallback template knows no tools: said, not trained without the calls
    with pytest.raises(ValueError, match="does not write tool calls"):
        encode_chat(tok, ex.messages, "all", ex.tools)


def test_tool_calls_bad_or_legacy_are_named_by_field():
    row = weather_row()
    row["messages"][1]["tool_calls"][0]["function"]["arguments"] = "{not json"
    assert normalize(row)[1][0][:2] == ("error", "messages[1].tool_calls[0].function.arguments")
    legacy = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "function_call": {"name": "get_current_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_current_weather", "content": "21.0"},
            {"role": "assistant", "content": "21 degrees"},
        ],
        "functions": [{"name": "get_current_weather"}],
    }
    problems = normalize(legacy)[1]
    assert ("error", "functions", "the legacy form of tools: write them as tools") in problems
    assert (
        "error",
        "messages[1].function_call",
        "the legacy form of a tool call: write it as tool_calls",
    ) in problems
    assert (
        "error",
        "messages[2].role",
        "the legacy form of a tool result: write it as role tool",
    ) in problems
    no_answer = weather_row()
    no_answer["messages"] = no_answer["messages"][:3]
    assert normalize(no_answer)[1] == [
        ("error", "messages", "ends with a tool result: the assistant's turn after it is missing")
    ]
    stray = weather_row()
    stray["messages"] = [stray["messages"][0], stray["messages"][2], stray["messages"][3]]
    assert normalize(stray)[1] == [("error", "messages", "turn 2 is a tool result that answers no tool call")]
    bad_tools = {**weather_row(), "tools": [{"type": "function", "function": {"description": "x"}}]}
    assert normalize(bad_tools)[1] == [("error", "tools[0].function.name", "missing")]


def test_tool_calls_train_with_sft_and_are_refused_where_they_would_be_lost(tmp_path):
    from conftest import make_model

    tok = make_tokenizer("qwen2")
    tok.chat_template = TOOL_TEMPLATE
    model_dir = tmp_path / "tiny-qwen2-tools"
    make_model("qwen2", tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    cities = ["Paris", "Lyon", "Oslo", "Rome", "Bern", "Kiev", "Riga", "Baku"]
    data = write_jsonl(
        tmp_path / "tools.jsonl", [weather_row(c, f"{20 + i}.0") for i, c in enumerate(cities)]
    )
    r = cli("data", "check", str(data), "--model", str(model_dir), "--max-length", "60")
    assert r.returncode == 1 and f"{data}:1:" in r.stdout and "longer than --max-length 60" in r.stdout, (
        r.stdout
    )
    r = cli(
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--registry",
        "off",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x for x in log)
    r = cli(
        "eval", "--model", str(model_dir), "--data", str(data), "--max-new-tokens", "2", "--registry", "off"
    )
    assert r.returncode == 2 and r.stderr == (
        f"error: {data}:1: tool calls: eval does not handle them yet (supervised training does); leave such "
        "examples out here\n"
    )
    plain = tmp_path / "plain"
    tok.chat_template = None
    make_model("qwen2", tok).save_pretrained(plain)
    tok.save_pretrained(plain)
    r = cli(
        "train",
        "--model",
        str(plain),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run2"),
        "--registry",
        "off",
    )
    assert r.returncode == 2 and r.stderr.startswith(
        f"error: {data}:1: the model's chat template does not write tool calls"
    )


def test_data_prepare_keeps_tool_calls_and_tells_calls_apart(tmp_path):
    rows = [weather_row(f"City{i}", f"{i}.0") for i in range(30)]
    twin = weather_row("City0", "0.0")  # the same but for the call's arguments: not a duplicate
    twin["messages"][1]["tool_calls"][0]["function"]["arguments"] = json.dumps(
        {"location": "City0, USA", "format": "fahrenheit"}
    )
    src = write_jsonl(tmp_path / "tools.jsonl", [*rows, twin])
    r = cli("data", "prepare", str(src), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "; dropped 0 " in r.stdout, r.stdout
    back = [
        ex for split in ("train", "val", "test") for ex in load_examples(tmp_path / "out" / f"{split}.jsonl")
    ]
    assert len(back) == 31 and all(ex.tools == WEATHER_TOOLS for ex in back)
    calls = sorted(ex.messages[1]["tool_calls"][0]["function"]["arguments"]["format"] for ex in back)
    assert calls.count("fahrenheit") == 1
