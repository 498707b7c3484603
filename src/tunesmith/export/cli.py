"""`tunesmith merge` (an adapter folded into its base) and `tunesmith export` (GGUF: export/gguf.py's
`export()`).

The parsers are declarations only; each handler imports its library when the command runs, so building
every parser (`tunesmith --help`) imports no torch."""

from __future__ import annotations

import dataclasses
import time

from tunesmith.export.gguf_quant import QUANTS  # names only
from tunesmith.flags import add_model, add_registry


def add_parsers(sub) -> None:
    """The parsers of `merge` and `export` (declarations only)."""
    p = sub.add_parser(
        "merge", help="fold an adapter into the base model: a standalone Hugging Face directory"
    )
    add_model(p)
    p.add_argument("--adapter", required=True, help="run directory of a trained adapter")
    p.add_argument("--out", required=True, help="directory to write (safetensors, tokenizer, chat template)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a merged model tunesmith wrote in --out (only once the new one is written)",
    )
    add_registry(p)
    p.set_defaults(handler=cli_merge)

    p = sub.add_parser(
        "export", help="export the merged model (or the adapter alone) as a GGUF file for llama.cpp/Ollama"
    )
    add_model(p)
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
    p.set_defaults(handler=cli_export)


def cli_merge(args) -> int:
    from tunesmith.export.merge import adapter_config, human_bytes, merge_to_dir
    from tunesmith.export.register import register_output
    from tunesmith.files.outputs import check_out
    from tunesmith.models.loading import base_model_of, is_task_run

    spec = base_model_of(args.adapter, args.model)
    out = check_out(
        args.out, "merge", overwrite=args.overwrite, inputs={"--adapter": args.adapter, "--model": spec}
    )
    if not is_task_run(args.adapter):  # a --task run merges its head too (merge.py)
        adapter_config(args.adapter)
    t0 = time.time()
    r = merge_to_dir(spec, args.adapter, out, trust_remote_code=args.trust_remote_code)
    result = {"bytes": r["bytes"], "arch": r["arch"], "dtype": r["dtype"]}
    config = {"adapter": args.adapter, "model": spec}
    register_output("merge", out, adapter=args.adapter, model=spec, result=result, config=config, started=t0,
                    registry_path=args.registry)  # fmt: skip
    print(
        f"wrote {out}/ ({human_bytes(r['bytes'])} safetensors, {r['dtype']}, {r['arch']}, merged in "
        f"{time.time() - t0:.0f}s)"
    )
    return 0


def cli_export(args) -> int:
    from tunesmith.export.gguf import ExportSpec, export

    export(ExportSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportSpec)}))
    return 0
