"""The parsers of the commands around training runs: `runs`, `errors`, `review`, `ui`, `sweep`,
`curve`, `plan` and `data generate`, with the --registry and --track flags every command shares.
Declarations only (argparse, no work): each names the handler `tunesmith.cli.main` imports when the
command runs. Apart from cli.py so that module stays within the size rule as commands are added."""

from __future__ import annotations

import argparse

from tunesmith.train.config import add_config_flags  # light: dataclasses and the core, no torch


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


def add_data_generate(dsub) -> None:
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
    p.set_defaults(handler="tunesmith.use.drafts:cli_generate")


def add_errors(sub) -> None:
    p = sub.add_parser(
        "errors",
        help="where and why an eval's outputs fail, as groups (style rules, stopping, length, inputs, "
        "metadata); with two evals of one test set, which groups got better or worse",
    )
    p.add_argument(
        "evals",
        nargs="+",
        metavar="EVAL",
        help="an eval (its --out folder, results.json, or id/name in the registry) or a trained run (its "
        "newest eval); a second one to compare with the first",
    )
    p.add_argument("--system", help="which system of a several-system eval (default: the last, the tuned)")
    p.add_argument("--metric", help="the per-example metric groups are measured by (default rougeL)")
    p.add_argument("--worst", type=int, default=3, help="worst examples shown per group (default 3)")
    p.add_argument("--json", action="store_true", help="everything as JSON")
    add_registry(p)
    p.set_defaults(handler="tunesmith.eval.cli:cli_errors")


def add_track(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--track",
        choices=["mlflow"],
        default=None,
        help="also log the run to an MLflow tracking server (MLFLOW_TRACKING_URI; needs tunesmith[mlflow])",
    )


def add_runs(sub) -> None:
    runs = sub.add_parser(
        "runs", help="every run and where it came from: list, show, compare, tag, rm, import"
    )
    add_registry(runs)
    runs.add_argument("--status", choices=["running", "done", "failed", "interrupted"], help="only these")
    runs.add_argument("--kind", help="only this kind of run (train, eval, merge, export)")
    runs.add_argument("--name", help="only runs whose name contains this")
    runs.add_argument("--model", help="only runs of this base model")
    runs.add_argument("--tag", help="only the run with this tag")
    runs.add_argument("--data", help="only runs on a data file whose path contains this (or sha256 prefix)")
    runs.add_argument("--limit", type=int, default=None, help="at most this many, newest first")
    runs.add_argument("--json", action="store_true", help="print JSON")
    rsub = runs.add_subparsers(dest="runs_action", metavar="ACTION")
    p = rsub.add_parser("show", help="one run in full: data, settings, lineage, curves")
    p.add_argument(
        "ref", metavar="RUN", help="run id (or its first 4+ characters), tag, name or run directory"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p = rsub.add_parser("compare", help="settings, data (example by example) and metrics of two or more runs")
    p.add_argument("refs", nargs="+", metavar="RUN")
    p.add_argument(
        "--allow-different-test",
        action="store_true",
        help="list metrics measured on different test sets or decoding (no paired tests)",
    )
    p = rsub.add_parser("tag", help="give a run a tag (v10, production); a tag names one run")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("tag")
    p = rsub.add_parser("promote", help="put a training run in production (--adapter production finds it)")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("--line", default="", help="one of several model lines: its tag is LINE:production")
    p = rsub.add_parser("untag", help="remove a tag")
    p.add_argument("tag")
    p = rsub.add_parser("rm", help="remove a run from the registry (its files stay unless --delete-files)")
    p.add_argument("ref", metavar="RUN")
    p.add_argument("--delete-files", action="store_true", help="also delete the run directory")
    p = rsub.add_parser("import", help="register finished run directories (trained elsewhere or earlier)")
    p.add_argument("dirs", nargs="+", metavar="RUN_DIR")
    runs.set_defaults(handler="tunesmith.runs.cli:cli_runs")


def add_review(sub) -> None:
    review = sub.add_parser(
        "review", help="people's judgements of outputs: queues, stats, export as training data"
    )
    add_registry(review)
    review.add_argument("--json", action="store_true", help="print JSON")
    rsub = review.add_subparsers(dest="review_action", metavar="ACTION")
    p = rsub.add_parser(
        "add", help="a review queue from registered evals on one test set, from captures, or from drafts"
    )
    p.add_argument("refs", nargs="*", metavar="EVAL", help="an eval (or a trained run: its newest eval)")
    p.add_argument("--captures", action="store_true", help="what `serve --capture` kept, instead of evals")
    p.add_argument("--drafts", metavar="FILE", help="what `data generate` drafted: accept, correct or reject")
    p.add_argument(
        "--since", metavar="DATE", help="with --captures: only those since DATE (YYYY-MM-DD[ HH:MM])"
    )
    p.add_argument("--name", help="the queue's name (default: the last eval's name)")
    p.add_argument("--pair", help="the two outputs A/B judgements compare, A,B (default: the first two)")
    rsub.add_parser("list", help="the queues, with items and judgements (the default)")
    p = rsub.add_parser("stats", help="judgements per reviewer, win rates with intervals, Cohen's kappa")
    p.add_argument("--queue", action="append", help="only this queue (repeatable)")
    p = rsub.add_parser(
        "export", help="corrected and accepted answers as chat examples (--sft), A/B choices as pairs (--dpo)"
    )
    p.add_argument(
        "--sft", metavar="FILE", help="write corrected and accepted answers here (.jsonl chat examples)"
    )
    p.add_argument(
        "--dpo", metavar="FILE", help="write preference pairs here (.jsonl prompt/chosen/rejected)"
    )
    p.add_argument("--queue", action="append", help="only this queue (repeatable; default: all)")
    p.add_argument("--train", metavar="DATA", help="the training data: examples already in it are left out")
    p.add_argument("--holdout", action="append", default=[], metavar="FILE", help="a test set to hold back")
    p = rsub.add_parser("rm", help="delete a queue with its judgements")
    p.add_argument("queue")
    p = rsub.add_parser("purge", help="delete what `serve --capture` kept before DATE (and its review items)")
    p.add_argument("--before", required=True, metavar="DATE", help="YYYY-MM-DD[ HH:MM], local time")
    review.set_defaults(handler="tunesmith.review.cli:cli_review")
    p = sub.add_parser(
        "ui", help="the review web app: runs, evals, compare, the review queue (the 'serve' extra)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1)",
    )
    p.add_argument("--port", type=int, default=8400, help="port (default 8400)")
    add_allow_host(p)
    p.add_argument(
        "--token-env",
        default="TUNESMITH_UI_TOKEN",
        help="variable holding the token (default TUNESMITH_UI_TOKEN; unset: a new one each start)",
    )
    p.add_argument(
        "--no-token",
        action="store_true",
        help="no token on a loopback address (anyone on this machine may then read the registry)",
    )
    add_registry(p)
    p.set_defaults(handler="tunesmith.ui.cli:cli_ui")


def add_sweep(sub, add_model) -> None:
    p = sub.add_parser("sweep", help="search training settings with Optuna; every trial a registered run")
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file (with --val)")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument(
        "--out", required=True, help="the sweep's folder: its study, one folder per trial, best.yaml"
    )
    p.add_argument("--config", help="YAML file with the settings every trial starts from (flags win)")
    p.add_argument(
        "--space", required=True, help='what to search: "lr=1e-4..3e-3:log, lora_r=8|16|32" or a YAML file'
    )
    p.add_argument(
        "--trials", type=int, default=20, help="trials in all, counting finished ones (default 20)"
    )
    p.add_argument("--time", help="stop starting trials after this long: 90m, 2h, 3600s")
    p.add_argument(
        "--metric",
        default="val_loss",
        help="val_loss (default) or a generation metric on the validation set (rougeL)",
    )
    p.add_argument(
        "--direction", choices=["minimize", "maximize"], help="default: minimize a loss, maximize a metric"
    )
    p.add_argument(
        "--pruner",
        default="median",
        choices=["median", "halving", "none"],
        help="stop poor trials early (default median)",
    )
    p.add_argument(
        "--storage",
        help="an Optuna storage URL shared by workers or machines (default: a journal file in --out)",
    )
    p.add_argument("--study", help="the study's name (default: the --out folder's name)")
    p.add_argument(
        "--resume", action="store_true", help="continue the study in --out: finished trials are kept"
    )
    p.add_argument(
        "--workers", type=int, default=1, help="processes taking trials from the study at once (default 1)"
    )
    add_registry(p)
    add_config_flags(p)
    p.set_defaults(handler="tunesmith.sweep.cli:cli_sweep")


def add_curve(sub, add_model) -> None:
    p = sub.add_parser(
        "curve", help="would more data help? train on nested subsets, measure each on one held-out set"
    )
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a .jsonl train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--out", required=True, help="folder for the subsets, one run per point, report.html")
    p.add_argument("--config", help="YAML file with the training settings (flags win)")
    p.add_argument("--fractions", default="0.25,0.5,1", help="subset sizes as fractions (default 0.25,0.5,1)")
    p.add_argument(
        "--test", help="the held-out file every point is measured on (default: the validation file)"
    )
    p.add_argument("--metric", default="rougeL", help="the metric to plot (default rougeL)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest generated answer (default 256)")
    p.add_argument("--json", action="store_true", help="print the points and the sentence as JSON")
    add_registry(p)
    add_config_flags(p)
    p.set_defaults(handler="tunesmith.sweep.cli:cli_curve")


def add_plan(sub, add_model) -> None:
    p = sub.add_parser(
        "plan",
        help="will a training run fit, and how long will it take: predicted before loading the model",
    )
    add_model(p)
    p.add_argument("--data", help="folder with train.jsonl and val.jsonl, or a train file")
    p.add_argument("--val", help="validation file (default: val.jsonl beside the training data)")
    p.add_argument("--config", help="YAML file with any of the train flags (command line wins)")
    p.add_argument("--out", help=argparse.SUPPRESS)  # train's flag, accepted so a train line can be reused
    p.add_argument("--suggest", action="store_true", help="also list other settings when the run fits")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    add_config_flags(p)
    p.set_defaults(handler="tunesmith.train.cli:cli_plan")
