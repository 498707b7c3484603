"""`tunesmith chat`: a conversation in the terminal with the adapter attached, tokens streamed.

Commands typed as a message: /reset forgets the conversation, /exit (or Ctrl-D) leaves.
Input can also be piped, one message a line, which is how the tests drive it.
"""

from __future__ import annotations

import sys

from tunesmith.errors import UserError
from tunesmith.models.chat import prompt_ids, stop_token_ids
from tunesmith.models.loading import TextStream, base_model_of, check_adapter_dir, generate_ids, load

HELP = "type a message; /reset forgets the conversation, /exit or Ctrl-D leaves"


def reply(
    loaded,
    history: list[dict],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
    write=None,
) -> str:
    """Generate the assistant's answer to `history`, handing each piece of text to `write` as it comes."""

    tok = loaded.tokenizer
    stream = TextStream(tok)

    def on_token(row: int, token: int) -> bool:
        piece = stream.add(token)
        if piece and write:
            write(piece)
        return False

    generate_ids(
        loaded.model,
        [prompt_ids(tok, history)],
        pad_id=tok.pad_token_id,
        stop_ids=stop_token_ids(tok),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        on_token=on_token,
    )
    rest = stream.flush()
    if rest and write:
        write(rest)
    return stream.text


def cli_chat(args) -> int:
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or more")
    if args.adapter:
        check_adapter_dir(args.adapter)
    spec = base_model_of(args.adapter, args.model)
    loaded = load(spec, args.adapter, trust_remote_code=args.trust_remote_code)
    tty = sys.stdin.isatty()
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    if tty:
        print(HELP, file=sys.stderr)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    while True:
        try:
            line = input("> " if tty else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = list(start)
            print("(conversation cleared)")
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}; {HELP}")
            continue
        history.append({"role": "user", "content": line})
        answer = reply(
            loaded,
            history,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            write=write,
        )
        print()
        history.append({"role": "assistant", "content": answer.strip()})
    return 0
