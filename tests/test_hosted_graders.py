"""Hosted fine-tuning's graders, run here (scoring/hosted.py): each kind on the published guide's own
examples (platform.openai.com/docs/guides/graders) and, where the guide names only a library, on that
library's documented values (rapidfuzz's README, nltk's docstrings, rouge-score's README); the formula
of a multi grader; what a bad grader file gets; and the graders in `tunesmith eval` (rows, paired
tests, the gate) and as GRPO rewards."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import cli, toy_examples, write_jsonl
from tunesmith.errors import UserError
from tunesmith.scoring import hosted as H
from tunesmith.scoring.hosted_judge import parse_label, parse_score
from tunesmith.scoring.templates import sample_of

OUT = "{{ sample.output_text }}"
WORDS = "def grade(sample, item):\n    return min(len(sample['output_text'].split()), 10) / 10\n"


def grade(spec: dict, answers: list[str], items: list[dict], ctx: H.Context | None = None) -> list[float]:
    g = H.build(spec, "g.json", ctx or H.Context())
    return g.score([sample_of(a) for a in answers], items, [f"d.jsonl:{i + 1}" for i in range(len(answers))])


def test_string_check_operations_as_the_guide_defines_them():
    ref = {"reference_answer": "Paris"}
    answers = ["Paris", "paris", "It is Paris.", "It is paris.", "Lyon"]

    def check(op):
        spec = {
            "type": "string_check",
            "name": op,
            "operation": op,
            "input": OUT,
            "reference": "{{ item.reference_answer }}",
        }
        return grade(spec, answers, [ref] * len(answers))

    assert check("eq") == [1, 0, 0, 0, 0]  # matches, case-sensitive
    assert check("ne") == [0, 1, 1, 1, 1]
    assert check("neq") == check("ne")  # the guide's prose spells it neq
    assert check("like") == [1, 0, 1, 0, 0]  # contains, case-sensitive
    assert check("ilike") == [1, 1, 1, 1, 0]  # contains, any case


def test_text_similarity_metrics_give_their_libraries_documented_values():
    def sim(metric, answer, reference):
        spec = {
            "type": "text_similarity",
            "name": "s",
            "evaluation_metric": metric,
            "input": OUT,
            "reference": "{{ item.r }}",
        }
        return grade(spec, [answer], [{"r": reference}])[0]

    # fuzzy_match: rapidfuzz's README, WRatio with default_process: 95.0
    assert sim("fuzzy_match", "this is a test", "this is a new test!!!") == pytest.approx(0.95)
    # the guide's own Python grader for a fuzzy match, on its own example, gives what fuzzy_match gives
    src = """
from rapidfuzz import fuzz, utils

def grade(sample, item) -> float:
    output_text = sample["output_text"]
    reference_answer = item["reference_answer"]
    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0
"""
    py = grade(
        {"type": "python", "source": src},
        ["fuzzy wuzzy was a bear"],
        [{"reference_answer": "fuzzy wuzzy had no hair"}],
        H.Context(trust_code=True),
    )[0]
    assert py == pytest.approx(0.75556, abs=1e-5)
    assert sim("fuzzy_match", "fuzzy wuzzy was a bear", "fuzzy wuzzy had no hair") == py
    # rouge-score's README example: rouge1 F 0.7059, rougeL F 0.5882
    fox, dog = "The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog"
    assert sim("rouge_1", fox, dog) == pytest.approx(0.70588, abs=1e-5)
    assert sim("rouge_l", fox, dog) == pytest.approx(0.58824, abs=1e-5)
    assert sim("rouge_5", dog, dog) == 1.0  # "the quick brown": 1 of 6 and of 7 trigrams
    assert sim("rouge_3", fox, dog) == pytest.approx(2 / 13)
    # nltk's sentence_gleu docstring: 0.4393..., 0.1206..., and "the the the ..." 0.0909...
    ref1 = "It is a guide to action that ensures that the military will forever heed Party commands"
    hyp1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
    hyp2 = "It is to insure the troops forever hearing the activity guidebook that party direct"
    assert sim("gleu", hyp1, ref1) == pytest.approx(0.4393, abs=1e-4)
    assert sim("gleu", hyp2, ref1) == pytest.approx(0.1206, abs=1e-4)
    assert sim("gleu", "the the the the the the the", "the cat is on the mat") == pytest.approx(
        0.0909, abs=1e-4
    )
    assert sim("bleu", hyp1, hyp1) == pytest.approx(1.0) and sim("bleu", "a b", "c d") == pytest.approx(0.0)
    assert sim("meteor", "the cats sat", "the cat sat") > 0.9  # a stem match counts


def test_the_guides_multigrader_example_and_formulas():
    spec = {  # the guide's example: JSON with a name (fuzzy) and an email (exact)
        "type": "multi",
        "graders": {
            "name": {
                "name": "name_grader",
                "type": "text_similarity",
                "input": "{{sample.output_json.name}}",
                "reference": "{{item.name}}",
                "evaluation_metric": "fuzzy_match",
                "pass_threshold": 0.9,
            },
            "email": {
                "name": "email_grader",
                "type": "string_check",
                "input": "{{sample.output_json.email}}",
                "reference": "{{item.email}}",
                "operation": "eq",
            },
        },
        "calculate_output": "(name + email) / 2",
    }
    item = {"name": "John Doe", "email": "john.doe@gmail.com"}
    answers = [
        json.dumps(item),
        json.dumps({**item, "email": "john@x"}),
        json.dumps({**item, "name": "JOHN DOE"}),
    ]
    assert grade(spec, answers, [item] * 3) == [1.0, 0.5, 1.0]  # default_process lower-cases
    # operators and functions the guide lists; ^ is a power
    f = H.parse_formula(
        "max(a, b) ^ 2 + min(a, b) - abs(-1) + floor(1.5) + ceil(0.2) + sqrt(4) + exp(0) + log(1)",
        {"a", "b"},
        "w",
    )
    assert H.evaluate_formula(f, {"a": 0.5, "b": 0.2}) == pytest.approx(0.25 + 0.2 - 1 + 1 + 1 + 2 + 1 + 0)
    for bad, said in [
        ("__import__('os').system('x')", "functions are min, max"),
        ("a.real", "is not allowed here"),
        ("a + c", "names 'c'; the graders are a, b"),
        ("a +", "is not a formula"),
        ("'x' * 3", "is not allowed here"),
    ]:
        with pytest.raises(UserError, match=said):
            H.parse_formula(bad, {"a", "b"}, "w")
    # a division by zero grades 0 and is counted, as an invalid grade is
    g = H.build(
        {
            "type": "multi",
            "graders": {"a": {"type": "string_check", "operation": "eq", "input": "x", "reference": "y"}},
            "calculate_output": "1 / a",
        },
        "g.json",
        H.Context(),
    )
    assert g.score([sample_of("z")], [{}], ["d:1"]) == [0.0] and g.invalid == 1


def test_python_graders_need_the_flag_and_a_failing_grade_is_zero_and_counted():
    src = (
        "def grade(sample, item):\n    if 'boom' in sample['output_text']:\n        raise ValueError('x')\n"
        "    return item.get('v', 'not a number')\n"
    )
    spec = {"type": "python", "name": "p", "source": src, "image_tag": "2025-05-08"}
    with pytest.raises(UserError, match="add --trust-grader-code to allow it"):
        H.build(spec, "g.json", H.Context())
    ctx = H.Context(trust_code=True)
    g = H.build(spec, "g.json", ctx)
    assert g.score(
        [sample_of("ok"), sample_of("boom"), sample_of("ok")],
        [{"v": 0.7}, {"v": 1}, {}],
        ["d:1", "d:2", "d:3"],
    ) == [0.7, 0.0, 0.0]
    assert g.invalid == 2
    with pytest.raises(UserError, match=r"g.json.source: defines no function grade\(sample, item\)"):
        H.build({"type": "python", "source": "x = 1"}, "g.json", ctx)


def test_a_bad_grader_file_is_named_by_field_and_a_missing_variable_by_row(tmp_path):
    ctx = H.Context()
    cases = [
        ({"type": "regex"}, "g.json.type: 'regex'; expected one of string_check, text_similarity"),
        (
            {"type": "string_check", "input": OUT, "reference": "x", "operation": "like_any"},
            "g.json.operation: 'like_any'; expected one of eq, ne, like, ilike",
        ),
        (
            {"type": "text_similarity", "input": OUT, "reference": "x"},
            "g.json: text_similarity needs 'evaluation_metric'",
        ),
        (
            {"type": "text_similarity", "input": OUT, "reference": "x", "evaluation_metric": "rouge_9"},
            "g.json.evaluation_metric: 'rouge_9'",
        ),
        (
            {"type": "multi", "graders": {"m": {"type": "multi"}}, "calculate_output": "m"},
            "g.json.graders.m: a multi grader cannot hold another multi grader",
        ),
        (
            {"type": "score_model", "input": [{"role": "user", "content": "x"}], "model": "o4-mini"},
            "add --grader-judge MODEL",
        ),
    ]
    for spec, said in cases:
        with pytest.raises(UserError) as e:
            H.build(spec, "g.json", ctx)
        assert said in str(e.value)
    # a field this grader does not read is named, not dropped in silence
    H.build(
        {"type": "string_check", "name": "s", "input": OUT, "reference": "x", "operation": "eq", "id": 7},
        "g.json",
        ctx,
    )
    assert ctx.notes == ["g.json: string_check grader 's': not used here: id"]
    # the guide's tool-call grader reads sample.output_tools, which a text answer does not have
    tool = {
        "type": "string_check",
        "name": "function_name",
        "input": "get_acceptors",
        "reference": "{{sample.output_tools[0].function.name}}",
        "operation": "eq",
    }
    with pytest.raises(UserError) as e:
        grade(tool, ["x"], [{}])
    assert str(e.value) == (
        "d.jsonl:1: grader 'function_name': {{ sample.output_tools[0].function.name }}: sample has no "
        "'output_tools[0]'"
    )
    p = write_jsonl(tmp_path / "two.json", [])
    p.write_text(
        json.dumps(
            [{"type": "string_check", "name": "a", "input": OUT, "reference": "x", "operation": "eq"}] * 2
        )
    )
    with pytest.raises(UserError, match="grader name 'a' is used twice"):
        H.load_all([str(p)], H.Context())
    with pytest.raises(UserError, match="--grader nope.json: no such file"):
        H.load_all(["nope.json"], H.Context())


def test_judge_replies_are_read_leniently_and_clipped_to_the_range():
    assert parse_score('{"result": 0.8, "steps": []}') == 0.8
    assert parse_score("I'd say 7 out of 10") == 7.0
    assert parse_score("no idea") is None
    labels = ["good", "bad"]
    assert parse_label("Good.", labels) == "good"
    assert parse_label('{"result": "bad"}', labels) == "bad"
    assert parse_label("This answer is bad, not good", labels) == "bad"
    assert parse_label("neutral", labels) is None


class Judge(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible judge: the reply is what `answer(last user message)` returns."""

    answer = staticmethod(lambda text: "0.5")
    seen: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.seen.append(body)
        text = Judge.answer(body["messages"][-1]["content"])
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def judge_url():
    pytest.importorskip("openai", reason="an endpoint judge needs the 'teacher' extra (openai)")
    Judge.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_score_and_label_model_graders_ask_an_endpoint(judge_url):
    # the guide's score_model example: the reference and the answer templated into the messages
    score = {
        "type": "score_model",
        "name": "my_score_model",
        "model": "o4-mini-2025-04-16",
        "range": [0, 1],
        "input": [
            {"role": "system", "content": "You are an expert grader."},
            {
                "role": "user",
                "content": "Reference: {{ item.reference_answer }}. Model answer: {{ sample.output_text }}",
            },
        ],
        "sampling_params": {"max_completions_tokens": 32768, "top_p": 1, "reasoning_effort": "medium"},
    }
    Judge.answer = staticmethod(
        lambda t: {"0.9": '{"result": 0.9}', "2": "Score: 3", "x": "cannot say"}[
            t.split("Model answer: ")[1].split("\n")[0]
        ]
    )
    ctx = H.Context(judge=judge_url)
    g = H.build(score, "g.json", ctx)
    got = g.score(
        [sample_of("0.9"), sample_of("2"), sample_of("x")],
        [{"reference_answer": 1.0}] * 3,
        ["d:1", "d:2", "d:3"],
    )
    assert got == [0.9, 1.0, 0.0] and g.invalid == 1  # 3 clipped to the range; no number: 0, counted
    first = next(b for b in Judge.seen if "answer: 0.9" in b["messages"][-1]["content"])  # sent concurrently
    assert first["model"] == "o4-mini-2025-04-16" and first["messages"][0] == {
        "role": "system",
        "content": "You are an expert grader.",
    }
    assert first["messages"][1]["content"].startswith(
        "Reference: 1.0. Model answer: 0.9\n\nReply with a JSON object"
    )
    label = {
        "type": "label_model",
        "name": "my_label_model",
        "model": "o3-mini-2024-01-31",
        "labels": ["good", "bad"],
        "passing_labels": ["good"],
        "input": [
            {"role": "developer", "content": "You are an expert grader."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "Classify this: {{ sample.output_text }}"}],
            },
        ],
    }
    Judge.answer = staticmethod(lambda t: "good" if "fine" in t else "Bad.")
    g = H.build(label, "g.json", H.Context(judge=judge_url, judge_model="local-judge"))
    assert g.score([sample_of("fine"), sample_of("poor")], [{}, {}], ["d:1", "d:2"]) == [1.0, 0.0]
    assert Judge.seen[-1]["model"] == "local-judge" and Judge.seen[-1]["messages"][0]["role"] == "system"


def test_eval_with_graders_rows_paired_tests_and_the_gate(tiny_model_dir, tmp_path):
    rows = toy_examples(6)
    for i, r in enumerate(rows):
        r["topic"] = "budget" if i % 2 else "design"
    data = write_jsonl(tmp_path / "test.jsonl", rows)
    graders = tmp_path / "graders.json"
    graders.write_text(
        json.dumps(
            {
                "testing_criteria": [  # an exported eval's criteria
                    {
                        "type": "string_check",
                        "name": "no_topic",
                        "operation": "ne",
                        "input": OUT,
                        "reference": "{{ item.topic }}",
                    },
                    {
                        "type": "python",
                        "name": "words",
                        "source": WORDS,
                    },
                    {
                        "type": "text_similarity",
                        "name": "fuzzy",
                        "evaluation_metric": "fuzzy_match",
                        "input": OUT,
                        "reference": "{{ item.reference }}",
                        "pass_threshold": 0.2,
                    },
                ]
            }
        )
    )
    m = str(tiny_model_dir("llama"))
    flags = [
        "--model",
        m,
        "--data",
        str(data),
        "--grader",
        str(graders),
        "--max-new-tokens",
        "6",
        "--registry",
        "off",
    ]
    r = cli("eval", *flags, "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and r.stderr == (
        f"error: {graders}: testing_criteria[1]: a python grader runs its source here; add "
        "--trust-grader-code to allow it\n"
    )
    r = cli("eval", *flags, "--trust-grader-code", "--out", str(tmp_path / "e"), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    for key in ("grader:no_topic", "grader:words", "grader:fuzzy", "grader:fuzzy:pass"):
        assert key in res["metrics"] and key in res["metrics"]["ci95"]
    for ex, row in zip(res["examples"], rows):
        s = ex["scores"]
        assert s["grader:no_topic"] == float(ex["output"] != row["topic"])
        assert s["grader:words"] == min(len(ex["output"].split()), 10) / 10
        assert s["grader:fuzzy:pass"] == (100.0 if s["grader:fuzzy"] >= 0.2 else 0.0)
    assert res["metrics"]["grader:words"] == round(
        sum(e["scores"]["grader:words"] for e in res["examples"]) / 6, 4
    )
    assert set(res["graders"]) == {"no_topic", "words", "fuzzy"}
    # the same model again: the gate compares every grader by default, and passes
    r = cli(
        "eval",
        *flags,
        "--trust-grader-code",
        "--out",
        str(tmp_path / "e2"),
        "--gate",
        str(tmp_path / "e" / "results.json"),
    )
    assert r.returncode == 0, r.stderr
    assert "grader:words +0.00, 95 % interval +0.00 to +0.00" in r.stdout
    assert "grader fuzzy" in r.stdout and "gate passed" in r.stdout
    gate = json.loads((tmp_path / "e2" / "results.json").read_text())["gate"]
    assert {"grader:no_topic", "grader:words", "grader:fuzzy"} <= set(gate["metrics"])
    assert "grader fuzzy pass %" in (tmp_path / "e2" / "report.html").read_text()


def test_grpo_trains_on_a_hosted_grader(tiny_model_dir, tmp_path):
    rows = toy_examples(10)
    for r in rows:
        r["topic"] = "budget"
    data = write_jsonl(tmp_path / "grpo.jsonl", rows)
    g = tmp_path / "g.json"
    g.write_text(
        json.dumps(
            {
                "type": "multi",
                "name": "topic_and_words",
                "graders": {
                    "t": {
                        "type": "string_check",
                        "operation": "ilike",
                        "input": OUT,
                        "reference": "{{ item.topic }}",
                    },
                    "s": {
                        "type": "text_similarity",
                        "evaluation_metric": "rouge_1",
                        "input": OUT,
                        "reference": "{{ item.reference }}",
                    },
                },
                "calculate_output": "0.5 * t + 0.5 * s",
            }
        )
    )
    r = cli(
        "train",
        "--method",
        "grpo",
        "--graders",
        f"hosted:{g}*2,length:5",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--grpo-max-new-tokens",
        "6",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    assert "graders topic_and_words*2, length:5*1" in r.stderr
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(s for s in steps if "reward_topic_and_words" in s)
    assert step["reward"] == pytest.approx(
        2 * step["reward_topic_and_words"] + step["reward_length:5"], abs=1e-3
    )
    r = cli(
        "train",
        "--method",
        "grpo",
        "--graders",
        "hosted:missing.json",
        "--model",
        str(tiny_model_dir("llama")),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run2"),
    )
    assert r.returncode == 2 and r.stderr == "error: --graders missing.json: no such file\n"


def rft_rows(n: int) -> list[dict]:
    """Rows of a reinforcement-tuning file as the hosted guide shapes them: the prompt only (a developer
    turn and a user turn), and the grader's references in fields of their own."""
    return [
        {
            "messages": [
                {"role": "developer", "content": "Answer yes or no: is the request compliant?"},
                {
                    "role": "user",
                    "content": f"Request {i}: share the {'budget' if i % 2 else 'design'} file.",
                },
            ],
            "compliant": "yes" if i % 2 else "no",
            "explanation": "budget files are shared; design files are not",
        }
        for i in range(n)
    ]


def test_reinforcement_tuning_rows_train_with_grpo_and_are_graded_but_refused_by_sft(
    tiny_model_dir, tmp_path
):
    data = write_jsonl(tmp_path / "rft.jsonl", rft_rows(8))
    m = str(tiny_model_dir("llama"))
    r = cli("data", "check", str(data))
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[0] == (
        f"{data}:1: messages: no assistant turn: a prompt only, for --method grpo and eval --grader "
        "(supervised training refuses it) (warning)"
    )
    r = cli("train", "--model", m, "--data", str(data), "--out", str(tmp_path / "sft"), "--registry", "off")
    assert r.returncode == 2 and r.stderr == (
        f"error: --data {data}:1: no assistant turn: a prompt-only row (as a reinforcement-tuning file has) "
        "trains with --method grpo and is scored by eval --grader; this needs answers\n"
    )
    g = tmp_path / "g.json"
    g.write_text(
        json.dumps(
            {
                "type": "string_check",
                "name": "verdict",
                "operation": "ilike",
                "input": OUT,
                "reference": "{{ item.compliant }}",
            }
        )
    )
    r = cli(
        "eval",
        "--model",
        m,
        "--data",
        str(data),
        "--grader",
        str(g),
        "--max-new-tokens",
        "4",
        "--out",
        str(tmp_path / "e"),
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert "rougeL" not in res["metrics"]  # no answer to compare with: only the graders score
    for ex, row in zip(res["examples"], rft_rows(8)):
        assert ex["scores"]["grader:verdict"] == float(row["compliant"] in ex["output"].lower())
    r = cli(
        "train",
        "--method",
        "grpo",
        "--graders",
        f"hosted:{g}",
        "--model",
        m,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "grpo"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--grpo-max-new-tokens",
        "4",
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    assert "graders verdict*1" in r.stderr


def test_an_exported_eval_runs_as_it_is(tiny_model_dir, tmp_path):
    """The hosted evals guide's example (IT tickets): the eval's testing criteria with its run's
    input_messages template beside them, and the data file of {"item": ...} rows."""
    tickets = [
        ("My monitor won't turn on!", "Hardware"),
        ("I'm in vim and I can't quit!", "Software"),
        ("Best restaurants in Cleveland?", "Other"),
    ]
    data = write_jsonl(
        tmp_path / "tickets.jsonl", [{"item": {"ticket_text": t, "correct_label": c}} for t, c in tickets]
    )
    instructions = (
        "You are an expert in categorizing IT support tickets. Given the support ticket below, categorize "
        'the request into one of "Hardware", "Software", or "Other". Respond with only one of those words.'
    )
    spec = {
        "name": "IT Ticket Categorization",
        "data_source_config": {
            "type": "custom",
            "include_sample_schema": True,
            "item_schema": {
                "type": "object",
                "properties": {"ticket_text": {"type": "string"}, "correct_label": {"type": "string"}},
            },
        },
        "testing_criteria": [
            {
                "type": "string_check",
                "name": "Match output to human label",
                "input": "{{ sample.output_text }}",
                "operation": "eq",
                "reference": "{{ item.correct_label }}",
            }
        ],
        "data_source": {
            "type": "completions",
            "model": "gpt-4.1",
            "input_messages": {
                "type": "template",
                "template": [
                    {"role": "developer", "content": instructions},
                    {"role": "user", "content": "{{ item.ticket_text }}"},
                ],
            },
        },
    }
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps(spec))
    m = str(tiny_model_dir("llama"))
    r = cli(
        "eval",
        "--model",
        m,
        "--data",
        str(data),
        "--grader",
        str(ev),
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "e"),
        "--registry",
        "off",
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert [e["input"] for e in res["examples"]] == [t for t, _ in tickets]
    assert [e["meta"]["correct_label"] for e in res["examples"]] == [c for _, c in tickets]
    for e, (_, label) in zip(res["examples"], tickets):
        assert e["scores"]["grader:Match output to human label"] == float(e["output"] == label)
    assert "rougeL" not in res["metrics"]
    # the same data without the run's template: said, not guessed
    r = cli("eval", "--model", m, "--data", str(data), "--max-new-tokens", "3", "--registry", "off")
    assert (
        r.returncode != 0
        and "an exported eval's item needs its run's template: eval --grader EVAL.json"
        in (r.stdout + r.stderr)
    )
