"""The `tunesmith` command line.

Sub-commands are declared here with their flags only; the module that does the work is
imported when the command runs, so `tunesmith --help` stays fast (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tunesmith import __version__
from tunesmith.commands import (
    add_allow_host,
    add_curve,
    add_data_generate,
    add_errors,
    add_plan,
    add_registry,
    add_review,
    add_runs,
    add_sweep,
    add_track,
)
from tunesmith.errors import UserError, disk_full
from tunesmith.export.gguf_quant import QUANTS  # light: names only, gguf and llama.cpp imported when used
from tunesmith.models.resolve import DEFAULT_MODEL  # stdlib only: keeps --help fast
from tunesmith.registry.recorder import adapter_path  # sqlite3 and the core: no torch
from tunesmith.train.config import add_config_flags  # light: dataclasses and the core, no torch


def _add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"alias (see `tunesmith models`), local HF directory, .gguf file or hub id "
        f"(default: the adapter's base model, else {DEFAULT_MODEL})",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")


def _add_generation(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="stop after this many new tokens (default 256)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument("--system", default=None, help="system prompt to put before each prompt")


def _add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=["chat", "prompt-completion", "alpaca", "sharegpt", "preference"],
        help="treat every record as this shape instead of detecting it",
    )
    p.add_argument(
        "--template",
        default=None,
        help="inputs/ + outputs/ folders: the user turn, with {input} (and {name}) (default: the input as "
        "is)",
    )
    p.add_argument(
        "--system", default=None, help="inputs/ + outputs/ folders: a system prompt for every example"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunesmith",
        description="Fine-tune a small language model on your own examples, offline, and prove it helped.",
    )
    parser.add_argument("--version", action="version", version=f"tunesmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list model aliases and what is cached")
    p.add_argument("--fetch", metavar="ALIAS", help="download and convert an alias now")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler="tunesmith.models.resolve:cli_models")

    data = sub.add_parser("data", help="check and prepare examples")
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p = dsub.add_parser("check", help="report every problem in a data file, as file:line: field: message")
    p.add_argument("paths", nargs="+", metavar="PATH", help="JSONL/JSON file(s) or a folder of them")
    p.add_argument("--max-length", type=int, default=None, help="flag examples longer than this many tokens")
    _add_model(p)
    _add_read_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(handler="tunesmith.data.check:cli_check")
    p = dsub.add_parser(
        "prepare", help="normalize, clean, dedupe and split into train/val/test with a data card"
    )
    p.add_argument(
        "sources", nargs="+", metavar="SRC", help="files, folders, or a mix file (.yaml) of several data sets"
    )
    p.add_argument(
        "--out", required=True, help="folder to write train/val/test.jsonl and card.json/card.md into"
    )
    p.add_argument(
        "--split", default="0.8,0.1,0.1", help="train,val,test as ratios (0.8,0.1,0.1) or counts (150,20,30)"
    )
    p.add_argument("--seed", type=int, default=13, help="shuffle seed for the split (default 13)")
    p.add_argument("--group-by", help="field whose examples stay together in one split (e.g. meeting)")
    p.add_argument(
        "--near-dup",
        type=float,
        default=0.8,
        help="drop examples this similar (word 5-gram Jaccard) to an earlier one (default 0.8)",
    )
    p.add_argument("--max-length", type=int, default=None, help="drop examples longer than this many tokens")
    p.add_argument(
        "--eval-set",
        action="append",
        help="a held-out set: examples that duplicate it are dropped (repeatable)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set tunesmith prepared in --out (only once the new one is written)",
    )
    p.add_argument("--json", action="store_true", help="print the data card as JSON")
    _add_model(p)
    _add_read_options(p)
    p.set_defaults(handler="tunesmith.data.prepare:cli_prepare")
    add_data_generate(dsub)
    data.set_defaults(handler=None, _help=data.print_help)

    p = sub.add_parser("train", help="fine-tune with LoRA; writes a PEFT adapter into --out")
    _add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--config", help="YAML file with any of these flags (command line wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run tunesmith wrote in --out (only once the new one is done)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="with --resume: continue although the data files changed since the run started (recorded in the "
        "run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.add_argument(
        "--no-fit-check",
        action="store_true",
        help="train although the plan predicts more memory than there is (exit 4 otherwise)",
    )
    add_registry(p)
    add_track(p)
    add_config_flags(p)
    p.set_defaults(handler="tunesmith.train.cli:cli_train")
    add_plan(sub, _add_model)

    p = sub.add_parser(
        "eval",
        help="generate on held-out examples, score them (ROUGE, BLEU, METEOR, house style, ...), "
        "compare systems; writes results.json and report.html",
    )
    _add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument(
        "--data",
        required=True,
        help="JSONL of chat examples; the last assistant turn is the reference "
        '(a "references": [...] field adds more)',
    )
    p.add_argument("--style", help="house-style spec (YAML) for the format check")
    p.add_argument("--out", help="folder for results.json and report.html (default: print only)")
    p.add_argument("--baseline", help="results.json of an earlier eval: print a before/after table")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument(
        "--systems",
        help="compare several systems with the same decoding: base, prompted (your --system), "
        "few-shot:K, rag:K (K most similar training examples, BM25), tuned (--adapter); e.g. "
        "base,prompted,rag:3,tuned",
    )
    p.add_argument("--system-file", help="read the system prompt from this file")
    p.add_argument(
        "--train",
        help="training examples for few-shot, rag and --memorization (default: train.jsonl beside --data)",
    )
    p.add_argument(
        "--memorization",
        action="store_true",
        help="also score a sample of the training set: warn on a large gap",
    )
    p.add_argument(
        "--forgetting",
        action="store_true",
        help="score a general-knowledge probe set before and after tuning",
    )
    p.add_argument(
        "--embedding",
        action="store_true",
        help="add embedding similarity (needs the 'eval' extra; ~1 min per 1000 texts)",
    )
    p.add_argument(
        "--judge",
        metavar="MODEL",
        help="also grade every answer 1-10 with this local model (LLM-as-judge) and --rubric",
    )
    p.add_argument("--rubric", metavar="FILE", help="--judge: what a good answer does, in words")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (with --temperature)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--stop", action="append", help="cut each output at this string (repeatable)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_generation(p)
    p.add_argument(
        "--gate",
        metavar="REF",
        help="fail (exit 3) when significantly worse than REF (run id, tag, production, or a results.json) "
        "on the same test set and decoding",
    )
    p.add_argument(
        "--gate-metrics",
        metavar="M1,M2",
        help="the metrics the gate checks (default: rougeL and format_adherence, where measured)",
    )
    add_registry(p)
    add_track(p)
    p.set_defaults(handler="tunesmith.eval.cli:cli_eval")

    p = sub.add_parser("generate", help="generate text with the base model or an adapter attached")
    _add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument("prompt", nargs="?", help="the prompt; '-' reads it from stdin")
    p.add_argument(
        "--input",
        help='file of prompts: JSONL (chat examples or {"prompt": ...}) or plain text, one per line',
    )
    _add_generation(p)
    p.add_argument("--json", action="store_true", help="one JSON object per output")
    p.set_defaults(handler="tunesmith.use.generate:cli_generate")

    p = sub.add_parser("chat", help="talk to the model (adapter attached) in the terminal, tokens streamed")
    _add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter")
    p.add_argument("--max-new-tokens", type=int, default=512, help="longest answer per turn (default 512)")
    p.add_argument("--system", default=None, help="system prompt for the conversation")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); above 0 samples")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.set_defaults(handler="tunesmith.use.talk:cli_chat")

    p = sub.add_parser(
        "merge", help="fold an adapter into the base model: a standalone Hugging Face directory"
    )
    _add_model(p)
    p.add_argument("--adapter", required=True, help="run directory of a trained adapter")
    p.add_argument("--out", required=True, help="directory to write (safetensors, tokenizer, chat template)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a merged model tunesmith wrote in --out (only once the new one is written)",
    )
    add_registry(p)
    p.set_defaults(handler="tunesmith.export.merge:cli_merge")

    p = sub.add_parser(
        "export", help="export the merged model (or the adapter alone) as a GGUF file for llama.cpp/Ollama"
    )
    _add_model(p)
    p.add_argument("--adapter", help="run directory of a trained adapter (default: the base model alone)")
    p.add_argument("--format", choices=["gguf"], default="gguf", help="output format (default gguf)")
    p.add_argument(
        "--quant",
        type=str.lower,
        choices=QUANTS,
        default="f16",
        help="tensor type (default f16); q4_0..q5_1 and q8_0 by gguf-py, the K-quants (q4_k_m ...) by "
        "llama.cpp's quantizer (the 'llama' extra)",
    )
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="write a GGUF LoRA adapter (llama.cpp --lora) instead of a merged model",
    )
    p.add_argument("--out", required=True, help="the .gguf file to write")
    p.add_argument(
        "--verify",
        metavar="TEST.jsonl",
        help="run the written file through llama.cpp and the PyTorch model on these examples (greedy): "
        "token agreement, task metrics with paired tests, a warning on a significant drop ('llama' extra)",
    )
    p.add_argument("--verify-limit", type=int, default=20, help="examples of --verify to use (default 20)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=128,
        help="tokens generated per example by --verify (default 128)",
    )
    p.add_argument(
        "--style", help="format rules (YAML) for --verify's format adherence, as in `eval --style`"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a GGUF file tunesmith exported (only once the new one is written)",
    )
    add_registry(p)
    p.set_defaults(handler="tunesmith.export.gguf:cli_export")

    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP API with one or more adapters (needs the 'serve' extra)"
    )
    _add_model(p)
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="serve this adapter as model NAME (repeatable); requests choose it by their `model` field",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_allow_host(p)
    p.add_argument(
        "--api-key-env",
        default="TUNESMITH_API_KEYS",
        metavar="VAR",
        help="environment variable with the accepted API keys, comma-separated (default TUNESMITH_API_KEYS)",
    )
    p.add_argument("--api-key-file", help="file with one accepted API key a line")
    p.add_argument(
        "--no-auth", action="store_true", help="accept requests without a key (only sensible on 127.0.0.1)"
    )
    p.add_argument("--max-batch", type=int, default=16, help="requests generated together (default 16)")
    p.add_argument(
        "--max-queue", type=int, default=64, help="requests waiting beyond this get 429 (default 64)"
    )
    p.add_argument(
        "--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for (default 1024)"
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=4096,
        help="longest prompt accepted, in tokens (default 4096)",
    )
    p.add_argument(
        "--max-body", type=int, default=1_000_000, help="largest request body in bytes (default 1000000)"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a request may take in all (default 300)"
    )
    p.add_argument(
        "--log-prompts", action="store_true", help="put prompt text in the access log (off by default)"
    )
    p.add_argument(
        "--capture",
        action="store_true",
        help="keep every request and answer in the registry, and take POST /v1/feedback (off by default)",
    )
    add_registry(p)
    p.set_defaults(handler="tunesmith.serve.server:cli_serve")
    add_runs(sub)
    add_errors(sub)
    add_review(sub)
    add_sweep(sub, _add_model)
    add_curve(sub, _add_model)
    return parser


def resolve_adapters(args) -> None:
    """--adapter and --from-adapter may name a registered run (id, tag such as v10 or production, name)."""
    where = getattr(args, "registry", None)
    for key in ("adapter", "from_adapter"):
        value = getattr(args, key, None)
        if isinstance(value, str):
            setattr(args, key, adapter_path(value, where))
        elif isinstance(value, list):  # serve: NAME=RUN
            setattr(args, key, [_named(v, where) for v in value])


def _named(spec: str, where) -> str:
    name, sep, ref = spec.partition("=")
    return f"{name}={adapter_path(ref, where)}" if sep and ref else spec


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if not handler:
        (getattr(args, "_help", None) or parser.print_help)()
        return 2
    import warnings

    # Library deprecation notices are for us, not for the person running a command.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")

    module_name, func_name = handler.split(":")
    try:
        resolve_adapters(args)
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(args) or 0)
    except UserError as e:
        if str(e):
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as e:
        if not disk_full(e):
            raise
        where = getattr(e, "filename", None)
        print(
            f"error: disk full{f' writing {where}' if where else ''}; nothing was replaced: free some space "
            "and run "
            "again (an interrupted `train` continues with --resume)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
