"""The flags several commands share (--model, generation, reading options, --registry, --track,
--allow-host), declared once. Each package's cli.py builds its own commands' parsers with them.

Declarations only, and light: stdlib and the model aliases' default, so `tunesmith --help` and the data
commands never import torch."""

from __future__ import annotations

import argparse

from tunesmith.models.resolve import DEFAULT_MODEL


def add_model(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"alias (see `tunesmith models`), local HF directory, .gguf file or hub id "
        f"(default: the adapter's base model, else {DEFAULT_MODEL})",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code to run")


def add_generation(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-new-tokens", type=int, default=256, help="stop after this many new tokens (default 256)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together (default 16)")
    p.add_argument("--system", default=None, help="system prompt to put before each prompt")


def add_read_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=[
            "chat",
            "prompt-completion",
            "alpaca",
            "sharegpt",
            "preference",
            "preferred-output",
            "question-answer",
            "label",
            "labels",
            "target",
        ],
        help="treat every record as this shape instead of detecting it",
    )
    p.add_argument(
        "--template",
        default=None,
        help="the user turn: in inputs/ + outputs/ folders with {input} (and {name}); in a data file with "
        "the record's fields, e.g. 'Review: {review}\\nTitle: {title}' (the text of a labelled record, else "
        "the prompt)",
    )
    for name, what in (
        ("text", "the text of a labelled example"),
        ("label", "its class (or list of classes)"),
        ("target", "its number (regression)"),
        ("prompt", "the prompt (generation data)"),
        ("completion", "the answer (generation data)"),
    ):
        p.add_argument(f"--{name}-field", metavar="COLUMN", help=f"the field or CSV column that holds {what}")
    p.add_argument(
        "--system", default=None, help="inputs/ + outputs/ folders: a system prompt for every example"
    )


def add_registry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registry",
        metavar="PATH",
        default=None,
        help="the run registry (default: $TUNESMITH_REGISTRY, else $TUNESMITH_HOME/registry.db; off: none)",
    )


def add_allow_host(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests sent to this host name (repeatable; '*' for any, behind a proxy "
        "that checks it): other names get 421, a guard against DNS rebinding",
    )


def add_track(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--track",
        choices=["mlflow"],
        default=None,
        help="also log the run to an MLflow tracking server (MLFLOW_TRACKING_URI; needs tunesmith[mlflow])",
    )


def add_docs(p: argparse.ArgumentParser) -> None:
    """--docs INDEX and --passages K: answer from a document index (`generate`, `chat`, `serve`)."""
    p.add_argument(
        "--docs",
        metavar="INDEX",
        help="answer from a document index (`tunesmith docs index`): the passages most like each question go "
        "before it, and the answer's citations ([n]) are given with it",
    )
    p.add_argument("--passages", type=int, default=3, help="--docs: passages per answer (default 3)")
