"""`tunesmith generate`: the base model, or an adapter attached, on a prompt or a file of prompts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.data.formats import Issue, normalize, read_records
from tunesmith.errors import UserError
from tunesmith.models.chat import last_assistant
from tunesmith.models.loading import base_model_of, check_adapter_dir, generate, load


def read_prompts(path: str) -> list[list[dict]]:
    """JSONL (chat examples: the conversation up to the last answer; or {"prompt": ...}), else one
    prompt a line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--input {path}: no such file")
    if p.suffix in (".jsonl", ".json"):
        convs = []
        for line, obj in read_records(p):
            if isinstance(obj, Issue):
                raise UserError(str(obj))
            if isinstance(obj, dict) and "prompt" in obj and "completion" not in obj:
                convs.append([{"role": "user", "content": str(obj["prompt"])}])
                continue
            ex, problems = normalize(obj)
            if ex is None:
                raise UserError(f"{path}:{line}: {'; '.join(m for lvl, _, m in problems if lvl == 'error')}")
            convs.append(ex.messages[: last_assistant(ex.messages)])
        return convs
    return [[{"role": "user", "content": line}] for line in p.read_text().splitlines() if line.strip()]


def cli_generate(args) -> int:
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
    spec = base_model_of(args.adapter, args.model)
    loaded = load(spec, args.adapter, trust_remote_code=args.trust_remote_code, quiet=args.json)
    outs = generate(
        loaded.model, loaded.tokenizer, convs, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    for o in outs:
        if args.json:
            print(
                json.dumps(
                    {"output": o.text, "new_tokens": o.new_tokens, "stopped": o.stopped}, ensure_ascii=False
                )
            )
        else:
            print(o.text)
            if len(outs) > 1:
                print("---")
    return 0
