"""`tunesmith chat`: history, /reset and streamed text, driven through a pipe."""

from __future__ import annotations

from conftest import run_cli


def test_chat_keeps_history_and_resets(tiny_model_dir):
    from tunesmith.models.loading import generate, load
    from tunesmith.use.talk import reply

    model = tiny_model_dir("llama")
    loaded = load(str(model), quiet=True)
    streamed: list[str] = []
    a1 = reply(loaded, [{"role": "user", "content": "hello"}], max_new_tokens=6, write=streamed.append)
    assert "".join(streamed) == a1  # what was streamed is the whole answer
    assert (
        a1.strip()
        == generate(
            loaded.model, loaded.tokenizer, [[{"role": "user", "content": "hello"}]], max_new_tokens=6
        )[0].text
    )
    second = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": a1.strip()},
        {"role": "user", "content": "budget"},
    ]
    a2 = reply(loaded, second, max_new_tokens=6)

    r = run_cli(
        "chat",
        "--model",
        str(model),
        "--max-new-tokens",
        "6",
        input="hello\n/reset\nhello\nbudget\n/nope\n/exit\nignored\n",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        f"{a1}\n(conversation cleared)\n{a1}\n{a2}\n"
        "unknown command /nope; type a message; /reset forgets the conversation, /exit or Ctrl-D leaves\n"
    )


def test_chat_bad_flags(tmp_path):
    r = run_cli("chat", "--adapter", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr == f"error: --adapter {tmp_path / 'nope'}: no such directory\n"
    r = run_cli("chat", "--temperature", "-1")
    assert r.returncode == 2 and r.stderr == "error: --temperature must be 0 (greedy) or more\n"
