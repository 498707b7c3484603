"""`tunesmith generate`, `tunesmith chat`, and `tunesmith data generate` (a teacher drafts answers).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.flags import add_docs, add_generation, add_model


def add_parsers(sub) -> None:
    """The parsers of `generate` and `chat` (declarations only)."""
    p = sub.add_parser("generate", help="generate text with the base model or an adapter attached")
    add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument("prompt", nargs="?", help="the prompt; '-' reads it from stdin")
    p.add_argument(
        "--input",
        help='file of prompts: JSONL (chat examples or {"prompt": ...}) or plain text, one per line',
    )
    add_generation(p)
    add_docs(p)
    p.add_argument("--json", action="store_true", help="one JSON object per output")
    p.set_defaults(handler=cli_generate)

    p = sub.add_parser("chat", help="talk to the model (adapter attached) in the terminal, tokens streamed")
    add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer per turn (default 512)")
    p.add_argument("--system", default=None, help="system prompt for the conversation")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    add_docs(p)
    p.set_defaults(handler=cli_chat)

    p = sub.add_parser("predict", help="label or score texts with a run trained with --task (JSONL out)")
    p.add_argument("--adapter", required=True, metavar="RUN", help="run directory of a --task run")
    p.add_argument(
        "input", metavar="FILE", help="texts: JSONL/JSON/CSV/Parquet with a text field, or .txt lines"
    )
    p.add_argument("--out", metavar="FILE", help="write the JSONL here (default: standard output)")
    p.add_argument(
        "--text-field", default="text", metavar="FIELD", help="the field holding the text (default text)"
    )
    p.add_argument(
        "--max-length", type=int, default=1024, help="cut texts to this many tokens (default 1024)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code")
    p.set_defaults(handler=cli_predict)


def add_data_parsers(dsub) -> None:
    """`data generate`, under `tunesmith data`: a teacher model drafts answers (use/drafts.py)."""
    p = dsub.add_parser(
        "generate",
        help="a teacher model drafts answers for inputs that have none, for people to accept or correct",
    )
    p.add_argument(
        "--teacher",
        required=True,
        metavar="URL_OR_MODEL",
        help="an OpenAI-compatible endpoint (http://127.0.0.1:8080/v1: llama.cpp, Ollama, vLLM; the "
        "'teacher' extra), or a model alias, folder or trained run used through tunesmith",
    )
    p.add_argument(
        "--inputs",
        required=True,
        help="JSONL/JSON/CSV/Parquet of inputs (messages ending in a user turn, or input/prompt/text), "
        "or a folder of .txt/.md files",
    )
    p.add_argument("--out", required=True, help="the drafts (JSONL); run again with the same --out to resume")
    p.add_argument("--template", default="{input}", help="the user turn of a plain input, with {input}")
    p.add_argument("--system", help="a system prompt for the teacher (not kept in the drafts)")
    p.add_argument("--system-file", help="the system prompt from a file")
    p.add_argument("--train", help="training examples (file, or a prepared folder's train.jsonl) for --shots")
    p.add_argument(
        "--shots", type=int, default=0, help="show the teacher the K training examples most like each input"
    )
    p.add_argument("--style", help="the style spec (YAML) each draft is checked against")
    p.add_argument(
        "--best-of", type=int, default=1, help="sample N drafts, keep the first that passes --style"
    )
    p.add_argument("--max-tokens", type=int, default=512, help="longest draft in tokens (default 512)")
    p.add_argument(
        "--temperature", type=float, default=None, help="default 0 (greedy); 0.7 with --best-of over 1"
    )
    p.add_argument("--seed", type=int, default=13, help="sampling seed (default 13)")
    p.add_argument("--teacher-model", help="the endpoint's model name (default: the first it lists)")
    p.add_argument(
        "--api-key-env",
        default="TUNESMITH_TEACHER_KEY",
        metavar="VAR",
        help="variable with the endpoint's key (default TUNESMITH_TEACHER_KEY)",
    )
    p.add_argument("--concurrency", type=int, default=4, help="endpoint requests at once (default 4)")
    p.add_argument(
        "--retries", type=int, default=4, help="retries of a failed request, with backoff (default 4)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    p.add_argument("--batch-size", type=int, default=4, help="local teacher: inputs generated together")
    p.add_argument("--price", metavar="IN,OUT", help="price of a million prompt,new tokens: prints the cost")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a local teacher's own code to run")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.set_defaults(handler=cli_data_generate)


def cli_generate(args) -> int:
    from tunesmith.corpus.cite import open_docs, retrieve, sources, sources_line
    from tunesmith.models.loading import base_model_of, check_adapter_dir, generate, load
    from tunesmith.use.generate import read_prompts

    if args.input:
        convs = read_prompts(args.input)
    elif args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        convs = [[{"role": "user", "content": sys.stdin.read()}]]
    elif args.prompt:
        convs = [[{"role": "user", "content": args.prompt}]]
    else:
        raise UserError("give a prompt, '-' for stdin, or --input FILE")
    if not convs or not all(c and c[-1]["content"].strip() for c in convs):
        raise UserError("empty prompt")
    if args.system is not None:
        convs = [
            [{"role": "system", "content": args.system}] + [m for m in c if m["role"] != "system"]
            for c in convs
        ]
    if args.adapter:
        check_adapter_dir(args.adapter)
    index, given = open_docs(args.docs, args.passages), [None] * len(convs)
    if index is not None:
        convs, given = map(list, zip(*(retrieve(index, c, args.passages) for c in convs)))
    spec = base_model_of(args.adapter, args.model)
    loaded = load(spec, args.adapter, trust_remote_code=args.trust_remote_code, quiet=args.json)
    outs = generate(
        loaded.model, loaded.tokenizer, convs, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    for o, g in zip(outs, given):
        if args.json:
            row = {"output": o.text, "new_tokens": o.new_tokens, "stopped": o.stopped}
            print(json.dumps({**row, **(sources(g, o.text) if g is not None else {})}, ensure_ascii=False))
        else:
            print(o.text)
            if g is not None:
                print(sources_line(g, o.text))
            if len(outs) > 1:
                print("---")
    return 0


def cli_predict(args) -> int:
    from tunesmith.files.atomic import write_text
    from tunesmith.use.predict import agreement, load_run, predict, read_texts

    inputs = read_texts(args.input, args.text_field)
    model, tok, space = load_run(args.adapter, args.trust_remote_code)
    preds = predict(model, tok, space, [t for _, t, _ in inputs], args.max_length)
    rows = [
        {"where": w, **p, **({"gold": g} if g is not None else {})} for (w, _, g), p in zip(inputs, preds)
    ]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        write_text(Path(args.out), text)
    else:
        sys.stdout.write(text)
    said = agreement(space, rows)
    print(f"predicted {len(rows)} texts with {args.adapter}" + (f"; {said}" if said else "")
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)  # fmt: skip
    return 0


def cli_chat(args) -> int:
    from tunesmith.corpus.cite import open_docs, retrieve, sources_line
    from tunesmith.models.loading import base_model_of, check_adapter_dir, load
    from tunesmith.use.talk import HELP, reply

    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or more")
    if args.adapter:
        check_adapter_dir(args.adapter)
    index = open_docs(args.docs, args.passages)
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
        # the passages for this turn go to the model only: the history keeps the question as asked
        asked, given = retrieve(index, history, args.passages) if index is not None else (history, None)
        answer = reply(
            loaded,
            asked,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=args.seed,
            write=write,
        )
        print()
        if given is not None:
            print(sources_line(given, answer))
        history.append({"role": "assistant", "content": answer.strip()})
    return 0


def cli_data_generate(args) -> int:
    from tunesmith.use.drafts import (
        already_drafted,
        draft_all,
        plan_of,
        price_of,
        read_inputs,
        teacher_note,
        teacher_of,
    )

    for flag in ("concurrency", "best_of", "max_tokens", "batch_size"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.shots < 0 or args.timeout <= 0:
        raise UserError("--retries and --shots must be 0 or more, --timeout more than 0")
    price = price_of(args.price)
    inputs = read_inputs(args.inputs, args.template)
    plan = plan_of(args)
    out = Path(args.out)
    done = already_drafted(out, Path(args.inputs))  # a bad --out is said before any model loads
    note = teacher_note(args.teacher)
    if note:
        print(note, file=sys.stderr)
    s = draft_all(teacher_of(args), inputs, done, out, plan, concurrency=args.concurrency,
                  quiet=args.quiet or args.json, price=price)  # fmt: skip
    print(json.dumps(s.as_dict(), indent=2) if args.json else "\n".join(s.lines()))
    return 1 if s.failed else 0
