"""`tunesmith chat`: a conversation in the terminal with the adapter attached, tokens streamed.

Commands typed as a message: /reset forgets the conversation, /exit (or Ctrl-D) leaves.
Input can also be piped, one message a line, which is how the tests drive it.
"""

from __future__ import annotations

from tunesmith.models.chat import prompt_ids, stop_token_ids
from tunesmith.models.loading import TextStream, generate_ids

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
