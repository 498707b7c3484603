"""The Ollama Modelfile beside every GGUF: its TEMPLATE must prompt the model exactly as tunesmith does.

Checked three ways: the pieces spliced in Python (the template's twin) equal chat.render on conversations
the derivation never saw, for every family's template; where Go is installed, Go's own text/template (the
engine Ollama runs) renders the written TEMPLATE with Ollama's data shape and must give the same text; and
the export writes the file beside the GGUF, refuses to replace one it did not write, and prints how to run it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_tokenizer
from tunesmith.export import modelfile as mf
from tunesmith.models.chat import adds_bos, render

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

# Gemma 3's way: the system prompt folded into the first user turn
GEMMA3 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
    "{% endif %}{% for m in loop_messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim "
    "+ '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# Qwen 2.5's way (SmolLM2's too): a default system turn when the conversation has none
QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FAMILIES = ["llama", "gemma3", "phi3", "llama3", "gemma3-system", "qwen2.5"]

UNSEEN = [  # shapes beyond the derivation's probes: three answers, a system turn, braces and quotes
    [
        {"role": "system", "content": 'Answer as JSON: {"notes": [...]}'},
        {"role": "user", "content": "Meeting 1"},
        {"role": "assistant", "content": '{"notes": ["a"]}'},
        {"role": "user", "content": "Meeting 2 {{ .Content }}"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "Meeting 3"},
    ],
    [{"role": "user", "content": "only one\nwith two lines"}],
]


def family_tokenizer(family: str):
    if family == "llama3":
        tok = make_tokenizer("llama")
        tok.add_special_tokens(
            {
                "bos_token": "<|begin_of_text|>",
                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            }
        )
        tok.chat_template = LLAMA3
        return tok
    tok = make_tokenizer({"gemma3-system": "gemma3", "qwen2.5": "qwen2"}.get(family, family))
    tok.chat_template = {"gemma3-system": GEMMA3, "qwen2.5": QWEN25}.get(family, tok.chat_template)
    return tok


@pytest.mark.parametrize("family", FAMILIES)
def test_the_pieces_reproduce_the_template_on_unseen_conversations(family):
    tok = family_tokenizer(family)
    pieces, why = mf.checked_pieces(tok, strip_bos=False)
    assert pieces is not None, why
    for conv in UNSEEN:
        assert mf.splice(pieces, conv) == render(tok, conv, True)
    stops = mf.stop_tokens(tok, pieces)
    end = {"phi3": "<|end|>", "llama3": "<|eot_id|>"}.get(
        family, "<end_of_turn>" if "gemma" in family else "<|im_end|>"
    )
    assert stops[0] == end and tok.eos_token in stops


def test_the_exact_modelfile_of_a_chatml_model():
    tok = make_tokenizer("llama")
    text, why = mf.modelfile(tok, Path("/runs/notes.gguf"), model="my-model")
    assert why == ""
    assert text == (
        f"# Ollama Modelfile written by tunesmith {mf.__version__} for notes.gguf (my-model).\n"
        "#   ollama create notes -f notes.Modelfile && ollama run notes\n"
        "FROM ./notes.gguf\n"
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ else }}{{ end }}'
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n'
        '{{ else if eq .Role "assistant" }}{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}'
        '{{ end }}{{ end }}"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        "PARAMETER temperature 0\n"
        "PARAMETER repeat_penalty 1\n"
    )


def test_a_bos_the_tokenizer_adds_is_left_to_llama_cpp():
    """A template that writes BOS and a tokenizer that adds it: llama.cpp adds it (the GGUF says so), so
    the TEMPLATE must not write it again."""
    from tokenizers import processors

    tok = family_tokenizer("llama3")
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)]
    )
    assert adds_bos(tok)
    pieces, why = mf.checked_pieces(tok, strip_bos=True)
    assert pieces is not None, why
    assert not pieces.system_open.startswith(tok.bos_token) and not pieces.no_system.startswith(tok.bos_token)
    conv = UNSEEN[0]
    assert tok.bos_token + mf.splice(pieces, conv) == render(tok, conv, True)
    tok.chat_template = LLAMA3.replace("{{ bos_token }}", "")  # the tokenizer's BOS only: nothing to strip
    pieces, why = mf.checked_pieces(tok, strip_bos=True)
    assert pieces is not None, why
    assert mf.splice(pieces, conv) == render(tok, conv, True)


def test_a_template_that_is_not_a_fixed_text_per_turn_gets_no_template():
    tok = make_tokenizer("llama")
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text, why = mf.modelfile(tok, Path("x.gguf"), model="m")
    assert why == "its chat template renders some conversations differently from a fixed text per turn"
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "")
    assert f"# no TEMPLATE: {why}; Ollama will use the chat template inside the GGUF, if it knows it" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "FROM ./x.gguf" in text


GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	var in struct {
		Template string
		System   string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(in.Template))
	data := map[string]any{"System": in.System, "Messages": in.Messages}
	if err := t.Execute(os.Stdout, data); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    """A binary that renders a TEMPLATE with Go's text/template, given Ollama's data (System, Messages)."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed (apt install golang-go): Go's own template engine is not checked")
    d = tmp_path_factory.mktemp("go")
    (d / "main.go").write_text(GO_RENDER)
    (d / "go.mod").write_text("module render\n\ngo 1.19\n")
    env = {
        "GOCACHE": str(d / "cache"),
        "GOPATH": str(d / "gopath"),
        "PATH": str(Path(go).parent),
        "HOME": str(d),
    }
    subprocess.run([go, "build", "-o", str(d / "render"), "."], cwd=d, env=env, check=True)

    def run(template: str, messages: list[dict]) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        msgs = [{"Role": m["role"], "Content": m["content"]} for m in messages]
        req = json.dumps({"Template": template, "System": system, "Messages": msgs})
        return subprocess.run(
            [str(d / "render")], input=req, capture_output=True, text=True, check=True
        ).stdout

    return run


@pytest.mark.parametrize("family", FAMILIES)
def test_go_renders_the_written_template_as_tunesmith_renders_the_chat(family, go_render, tmp_path):
    tok = family_tokenizer(family)
    text, _ = mf.modelfile(tok, tmp_path / "m.gguf", model="m")
    template = text.split('TEMPLATE """', 1)[1].split('"""\n', 1)[0]
    for conv in [*UNSEEN, *mf.PROBES]:
        assert go_render(template, conv) == render(tok, conv, True)
