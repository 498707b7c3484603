"""An Ollama Modelfile beside every GGUF: the model's chat template in Ollama's template language, the
end-of-turn stop tokens, and greedy decoding, so `ollama run` prompts the model exactly as `tunesmith
generate` does ("answers badly in Ollama" is most often a wrong template or a missing stop token).

Why the template is derived by rendering rather than translated: Ollama's TEMPLATE is a Go template and
the model's is Jinja; no maintained library translates one into the other, and Ollama itself only
recognizes a list of known templates. But the templates of the families tunesmith trains (ChatML,
SmolLM2, Qwen, Llama 3, Phi-3/4, Gemma 3) put a fixed text around each turn's content. Rendering the
model's own template (chat.render, the rule training used) with marker contents gives those texts; a
Go template splices them back around Ollama's messages. `splice` is the same splice in Python, and the
pieces are used only when it reproduces chat.render on conversations of every shape (with and without a
system turn, one turn and several); otherwise the Modelfile says why and leaves TEMPLATE out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunesmith import __version__
from tunesmith.errors import UserError
from tunesmith.files.atomic import write_text
from tunesmith.models.chat import END_OF_TURN, adds_bos, cut_at, end_of_turn_markers, render

MARK = "# Ollama Modelfile written by tunesmith"
# marker contents: no whitespace at their ends (templates trim contents; Python counts \x1c-\x1f as space)
_S, _U, _A = "\u27e6TSYSTEM\u27e7", "\u27e6TUSER{}\u27e7", "\u27e6TANSWER{}\u27e7"


@dataclass(frozen=True)
class Pieces:
    """The fixed texts of a chat template, in the order a conversation is rendered."""

    system_open: str  # before the system prompt (a leading BOS included, unless the tokenizer adds it)
    system_close: str  # after it, before the first user turn's opening
    no_system: str  # what opens a conversation without a system prompt (a default system turn, if any)
    user_open: str
    user_close: str  # after a user turn: its end and the assistant's opening (the generation prompt)
    answer_close: str  # after an answer that more turns follow


def _common_suffix(*texts: str) -> str:
    n = 0
    while all(len(t) > n for t in texts) and len({t[len(t) - 1 - n] for t in texts}) == 1:
        n += 1
    return texts[0][len(texts[0]) - n :] if n else ""


def derive(tok, strip_bos: bool) -> Pieces | None:
    """The template's pieces, or None where it is not a fixed text around each turn's content."""
    u1, u2, a1 = _U.format(1), _U.format(2), _A.format(1)
    try:
        with_sys = render(
            tok, [_msg("system", _S), _msg("user", u1), _msg("assistant", a1), _msg("user", u2)], True
        )
        without = render(tok, [_msg("user", u1)], True)
    except Exception:  # noqa: BLE001 -- a template that refuses these shapes (e.g. no system role) has no pieces
        return None
    cuts, first = cut_at(with_sys, [_S, u1, a1, u2]), cut_at(without, [u1])
    if cuts is None or first is None:
        return None
    head, sys_to_user, mid, answer_to_user, tail = cuts
    if mid != tail or first[1] != tail:
        return None
    # any common suffix splices right; the longest that starts at a special token and holds no end-of-turn
    # marker reads as the user turn's opening (else none: the closing pieces carry it)
    common = _common_suffix(sys_to_user, answer_to_user, first[0])
    specials = {t.content for t in tok.added_tokens_decoder.values()} | set(tok.all_special_tokens)
    starts = [k for k in range(len(common)) if any(common.startswith(t, k) for t in specials if t)]
    clean = [k for k in starts if not any(m in common[k:] for m in END_OF_TURN)]
    user_open = common[min(clean) :] if clean else ""
    pieces = Pieces(
        system_open=head,
        system_close=sys_to_user[: len(sys_to_user) - len(user_open)],
        no_system=first[0][: len(first[0]) - len(user_open)],
        user_open=user_open,
        user_close=tail,
        answer_close=answer_to_user[: len(answer_to_user) - len(user_open)],
    )
    bos = tok.bos_token
    written = [bool(bos) and t.startswith(bos) for t in (pieces.system_open, pieces.no_system)]
    if strip_bos and any(
        written
    ):  # llama.cpp adds BOS itself when the GGUF says so: the template's would double
        if not all(written):
            return None
        pieces = Pieces(pieces.system_open[len(bos) :], pieces.system_close, pieces.no_system[len(bos) :],
                        pieces.user_open, pieces.user_close, pieces.answer_close)  # fmt: skip
    return pieces


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def splice(p: Pieces, messages: list[dict]) -> str:
    """What the Go template renders for `messages` (the Python twin of TEMPLATE, used to check it)."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    out = p.system_open + system + p.system_close if system else p.no_system
    turns = [m for m in messages if m["role"] != "system"]
    for k, m in enumerate(turns):
        if m["role"] == "user":
            out += p.user_open + m["content"] + p.user_close
        elif m["role"] == "assistant":
            out += m["content"] + (p.answer_close if k < len(turns) - 1 else "")
    return out


PROBES = [  # conversation shapes the pieces must reproduce, ending where the model answers
    [_msg("user", "Summarise: the team met on Monday.")],
    [_msg("system", "You write meeting notes."), _msg("user", "Notes for: budget approved.")],
    [
        _msg("system", "Be brief."),
        _msg("user", "First question?"),
        _msg("assistant", "First answer."),
        _msg("user", "Second question?"),
    ],
    [_msg("user", "a"), _msg("assistant", "b"), _msg("user", "c"), _msg("assistant", "d"), _msg("user", "e")],
]


def checked_pieces(tok, strip_bos: bool) -> tuple[Pieces | None, str]:
    """(pieces, "") when they reproduce the template on every probe; else (None, why)."""
    p = derive(tok, strip_bos)
    if p is None:
        return None, "its chat template does not put a fixed text around each turn"
    bos = tok.bos_token if strip_bos else None
    for probe in PROBES:
        want = render(tok, probe, True)
        if bos and want.startswith(bos):
            want = want[len(bos) :]
        if splice(p, probe) != want:
            return None, "its chat template renders some conversations differently from a fixed text per turn"
    return p, ""


def _literal(text: str) -> str:
    """Text in the Go template as it is, unless it could be read as template syntax (then a string action)."""
    if "{{" in text or "}}" in text or '"""' in text:
        return "{{ " + json.dumps(text) + " }}"
    return text


def go_template(p: Pieces) -> str:
    """Ollama's TEMPLATE: one line of actions (no whitespace trimming, which would eat the pieces' own)."""
    t = _literal
    return (
        f"{{{{ if .System }}}}{t(p.system_open)}{{{{ .System }}}}{t(p.system_close)}"
        f"{{{{ else }}}}{t(p.no_system)}{{{{ end }}}}"
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{ if eq .Role "user" }}}}{t(p.user_open)}{{{{ .Content }}}}{t(p.user_close)}'
        f'{{{{ else if eq .Role "assistant" }}}}{{{{ .Content }}}}'
        f"{{{{ if not $last }}}}{t(p.answer_close)}{{{{ end }}}}"
        "{{ end }}{{ end }}"
    )


def stop_tokens(tok, p: Pieces | None) -> list[str]:
    """The end-of-turn markers the template closes answers with, and the tokenizer's EOS."""
    closing = p.answer_close + p.user_open if p else "".join(END_OF_TURN)
    stops = [m for m in end_of_turn_markers(tok) if m in closing]
    if tok.eos_token and tok.eos_token not in stops:
        stops.append(tok.eos_token)
    return stops


def modelfile(tok, gguf: Path, *, model: str, adapter_of: str | None = None) -> tuple[str, str]:
    """(the Modelfile's text, why TEMPLATE is missing or ""). With adapter_of, `gguf` is a LoRA adapter and
    FROM names the base model's GGUF that `tunesmith export --model BASE` writes."""
    pieces, why = checked_pieces(tok, adds_bos(tok))
    name = gguf.stem
    lines = [f"{MARK} {__version__} for {gguf.name} ({model})."]
    if adapter_of:
        base = f"{Path(adapter_of).name}.gguf"
        lines += [
            f"# FROM is the base model's GGUF: tunesmith export --model {adapter_of} --out {base}",
            f"#   ollama create {name} -f {name}.Modelfile && ollama run {name}",
            f"FROM ./{base}",
            f"ADAPTER ./{gguf.name}",
        ]
    else:
        lines += [f"#   ollama create {name} -f {name}.Modelfile && ollama run {name}", f"FROM ./{gguf.name}"]
    if pieces:
        lines.append(f'TEMPLATE """{go_template(pieces)}"""')
    else:
        lines.append(
            f"# no TEMPLATE: {why}; Ollama will use the chat template inside the GGUF, if it knows it"
        )
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stop_tokens(tok, pieces)]
    lines.append("PARAMETER temperature 0")  # greedy, as `tunesmith generate` and `chat` by default
    # Ollama penalizes repeats by default (1.1), which tunesmith's greedy decoding (and llama.cpp's
    # llama-server) does not: with it the answers differ from the model's (tests/test_llama_cpp.py)
    lines.append("PARAMETER repeat_penalty 1")
    return "\n".join(lines) + "\n", why


def path_beside(gguf: Path) -> Path:
    return gguf.with_name(f"{gguf.stem}.Modelfile")


def check_replaceable(gguf: Path, overwrite: bool) -> None:
    """Before the export: the Modelfile beside --out is ours to (re)write, or absent."""
    path = path_beside(gguf)
    if not path.exists():
        return
    try:
        ours = path.is_file() and path.read_text(errors="replace").startswith(MARK)
    except OSError:
        ours = False
    if not ours:
        raise UserError(
            f"--out {gguf}: {path} exists and tunesmith did not write it; move it away or choose another "
            "--out (the export writes its Modelfile there)"
        )
    if not overwrite:
        raise UserError(f"--out {gguf}: {path} already exists; pass --overwrite to replace it with the GGUF")


def write_beside(tok, gguf: Path, *, model: str, adapter_of: str | None = None) -> tuple[Path, str]:
    """Write the Modelfile beside `gguf` (atomically); (its path, why TEMPLATE is missing or "")."""
    text, why = modelfile(tok, gguf, model=model, adapter_of=adapter_of)
    path = path_beside(gguf)
    write_text(path, text)
    return path, why


def how_to_run(out: Path, mf: Path, why: str, base: str | None = None) -> None:
    """The export's last words: its Modelfile, and the commands that run the file in Ollama and llama.cpp."""
    name = out.stem
    print(f"wrote {mf} (the chat template as Ollama's TEMPLATE, its stop tokens, greedy decoding)")
    if why:
        print(f"  note: no TEMPLATE in it: {why}")
    print(f"run it:  cd {mf.parent} && ollama create {name} -f {mf.name} && ollama run {name}")
    if base:
        print(f"     or: llama-server -m {base} --lora {out.name} --jinja   (the base exported as {base})")
    else:
        print(f"     or: llama-server -m {out} --jinja   (OpenAI-compatible, http://127.0.0.1:8080/v1)")
