"""`tunesmith export`: a GGUF file for llama.cpp / Ollama: the merged model (or the base model
alone), or with --adapter-only a GGUF LoRA adapter for `llama-cli -m BASE.gguf --lora FILE.gguf`.
(`tunesmith merge`, merge.py, writes a Hugging Face directory instead.)

How GGUF is written, and why this way: with the `gguf` package (gguf-py, pinned in pyproject)
and its tensor-name maps, not with llama.cpp's `convert_hf_to_gguf.py`. That converter is not
on PyPI: it lives in the llama.cpp repository, needs its own `conversion/` package and a
matching gguf-py, and reads a model directory from disk. Writing the file ourselves is a few
hundred lines for the architectures tunesmith trains (llama, qwen2, qwen3, phi3, gemma3), runs
offline on the merged model already in memory, and reuses the same name map and q/k
permutation for the LoRA-adapter file (gguf_arch.py: architectures, RoPE and names). The
rules below follow llama.cpp's converter (`LlamaModel.permute`, 1-D tensors and norms kept in
F32, Q8_0 falling back to F16 where a row is not a multiple of 32, tokenizer.ggml.* keys). The
tests read every file back with an independent reader -- transformers' GGUF loader, which undoes
the permutation -- and compare logits and greedy text with the model tunesmith serves;
llama.cpp itself (llama-cpp-python: tests/test_llama_cpp.py) when it is installed.

Every output is written under a temporary name beside --out and renamed into place at the
end, so an interrupted run never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tunesmith import __version__
from tunesmith.errors import UserError
from tunesmith.export import gguf_arch, gguf_quant, gguf_verify, modelfile
from tunesmith.export.gguf_vocab import add_tokenizer, llama_cpp_name, tokenizer_json, tokenizer_kind
from tunesmith.export.merge import adapter_config, human_bytes, load_fp32
from tunesmith.export.register import register_output
from tunesmith.files.atomic import make_temp_file
from tunesmith.files.faults import killpoint
from tunesmith.files.outputs import GGUF_MARK, check_out, check_replaceable
from tunesmith.models.loading import base_model_of, is_task_run, load_tokenizer
from tunesmith.models.resolve import resolve


class _Plan:
    """Tensors to write: names, shapes and types first (the header), then the data, one at a time,
    so the file is streamed without a second copy of the model in memory."""

    def __init__(self):
        self.items: list[
            tuple[str, tuple[int, ...], object, object]
        ] = []  # name, shape, qtype, () -> ndarray

    def add(self, name: str, shape, qtype, fetch) -> None:
        self.items.append((name, tuple(int(x) for x in shape), qtype, fetch))

    def write(self, writer) -> None:
        import numpy as np

        for name, shape, qtype, _ in self.items:
            writer.add_tensor_info(
                name, shape, np.dtype(np.float32), gguf_quant.nbytes(shape, qtype), raw_dtype=qtype
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _name, _shape, qtype, fetch in self.items:
            data = gguf_quant.encode(fetch(), qtype)
            writer.write_tensor_data(data)


def _write_atomic(out: Path, arch_name: str, fill, requant: str | None = None) -> int:
    """Run `fill(writer)` on a GGUFWriter aimed at a temp file beside `out` (then, with `requant`, hand that
    file to llama.cpp's quantizer, into a second temp) and rename the result into place.
    Every file carries GGUF_MARK, so a later `--overwrite` knows it replaces a file of ours."""
    import gguf

    fd, tmp = make_temp_file(out)
    os.close(fd)
    final = tmp
    writer = gguf.GGUFWriter(tmp, arch_name)
    try:
        writer.add_string(GGUF_MARK, f"tunesmith {__version__}")
        fill(writer)
        writer.close()
        if requant:
            fd, final = make_temp_file(out)
            os.close(fd)
            gguf_quant.llama_quantize(tmp, final, requant)
        killpoint("export.before_rename")
        check_replaceable(out, "gguf")
        os.replace(final, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
    return out.stat().st_size


# ---------------------------------------------------------------- GGUF: model


def model_plan(model, arch: gguf_arch.Arch, quant: str) -> _Plan:
    import numpy as np
    import torch

    name_map = gguf_arch.name_map(arch)
    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    plan = _Plan()
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp uses token_embd when there is no output.weight
        if hf_name.endswith(("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")):
            continue
        name = gguf_arch.gguf_name(name_map, hf_name)
        if name is None:
            raise UserError(
                f"tensor {hf_name} of this {arch.hf_type} model has no GGUF name; cannot export it"
            )
        heads = gguf_arch.qk_heads(arch, hf_name)

        shift = arch.norm_shift if name.endswith("norm.weight") else 0.0

        def fetch(t=tensor, heads=heads, shift=shift):
            a = t.detach().to(torch.float32).cpu().numpy()
            return gguf_arch.permute(a, heads) if heads else a + shift if shift else a

        output = name == "output.weight" or (tied and name == "token_embd.weight")
        qtype = gguf_quant.tensor_type(name, tuple(tensor.shape), quant, output=output)
        plan.add(name, tuple(tensor.shape), qtype, fetch)
    for name, factors in gguf_arch.rope_tensors(model.config, arch):
        qtype = gguf_quant.tensor_type(name, (len(factors),), quant)
        plan.add(name, (len(factors),), qtype, lambda f=factors: np.asarray(f))
    return plan


def export_model(model, tok, out: Path, quant: str, *, name: str, where: str) -> dict:
    """Write `model` (a plain HF causal LM, adapter already folded in) as a GGUF file at `out`."""
    arch = gguf_arch.arch_of(model.config, where)
    written = gguf_quant.first_pass(quant)  # f16 for llama.cpp's quantizer to take from there
    plan = model_plan(model, arch, written)
    meta: dict = {}

    def fill(writer):
        gguf_arch.add_hparams(
            writer, model.config, arch, gguf_quant.file_type(written), llama_cpp_name(name, tok)
        )
        meta.update(add_tokenizer(writer, tok, model.config, where))
        plan.write(writer)

    size = _write_atomic(out, arch.gguf_arch, fill, requant=quant if written != quant else None)
    return {"bytes": size, "arch": arch.gguf_arch, "tensors": len(plan.items), **meta}


# ---------------------------------------------------------------- GGUF: LoRA adapter


def export_lora(
    adapter: str, model_dir: Path, out: Path, quant: str, *, trust_remote_code: bool = False
) -> dict:
    """Write a PEFT LoRA adapter as a llama.cpp LoRA GGUF (general.type=adapter), matching the base
    model's GGUF tensor names. Reads only the base model's config and tensor shapes, not its weights."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    where = f"--adapter {adapter}"
    lora = _exportable_lora(adapter, where)
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    arch = gguf_arch.arch_of(config, f"--model {model_dir}")
    name_map = gguf_arch.name_map(arch)
    base_shapes = _base_shapes(model_dir)
    pairs = _lora_pairs(load_file(str(Path(adapter) / "adapter_model.safetensors")), where)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan = _Plan()
    ranks = set()
    for module, ab in sorted(pairs.items(), key=lambda kv: _block_order(kv[0])):
        if set(ab) != {"A", "B"}:
            raise UserError(f"{where}: {module} has only lora_{''.join(ab)}; the adapter file is incomplete")
        if module == "lm_head" and tied:
            raise UserError(
                f"{where}: adapts lm_head, which this model ties to the embeddings; llama.cpp cannot "
                f"apply that as a LoRA. Drop --adapter-only to export the merged model"
            )
        name = gguf_arch.gguf_name(name_map, module + ".weight")
        if name is None:
            raise UserError(f"{where}: module {module} has no GGUF name for a {arch.hf_type} model")
        a, b = ab["A"], ab["B"]
        base = base_shapes.get(module + ".weight")
        if base is None or base != (b.shape[0], a.shape[1]) or a.shape[0] != b.shape[1]:
            raise UserError(
                f"{where}: {module} does not fit the base model {model_dir} "
                f"(adapter {b.shape[0]}x{a.shape[1]}, base {base}); pass the --model it was trained on"
            )
        ranks.add(int(a.shape[0]))
        heads = gguf_arch.qk_heads(arch, module + ".")

        def fetch_a(t=a):
            return t.to(torch.float32).numpy()

        def fetch_b(t=b, heads=heads):
            x = t.to(torch.float32).numpy()
            return (
                gguf_arch.permute(x, heads) if heads else x
            )  # the permutation acts on output rows: B's rows

        plan.add(
            name + ".lora_a",
            tuple(a.shape),
            gguf_quant.tensor_type(name + ".lora_a", a.shape, quant),
            fetch_a,
        )
        plan.add(
            name + ".lora_b",
            tuple(b.shape),
            gguf_quant.tensor_type(name + ".lora_b", b.shape, quant),
            fetch_b,
        )
    if not plan.items:
        raise UserError(f"{where}: no LoRA weights found in adapter_model.safetensors")
    r = int(lora.get("r") or next(iter(ranks)))
    alpha = float(lora.get("lora_alpha") or r)
    # llama.cpp scales by alpha / rank; rank-stabilized LoRA scales by alpha / sqrt(rank)
    gguf_alpha = alpha * math.sqrt(r) if lora.get("use_rslora") else alpha

    def fill(writer):
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, gguf_alpha)
        writer.add_name(out.stem)
        plan.write(writer)

    n_bytes = _write_atomic(out, arch.gguf_arch, fill)
    return {"bytes": n_bytes, "arch": arch.gguf_arch, "tensors": len(plan.items), "alpha": gguf_alpha, "r": r}


def _exportable_lora(adapter: str, where: str) -> dict:
    """The adapter's config, if a llama.cpp LoRA file can express the adapter."""
    lora = adapter_config(adapter)
    if lora.get("use_dora"):
        raise UserError(
            f"{where}: a DoRA adapter rescales whole weight columns, which a llama.cpp LoRA file cannot "
            f"express; drop --adapter-only to export the merged model"
        )
    if lora.get("rank_pattern") or lora.get("alpha_pattern"):
        raise UserError(
            f"{where}: per-module ranks or alphas (rank_pattern/alpha_pattern) cannot be written to one "
            f"llama.cpp LoRA file; drop --adapter-only to export the merged model"
        )
    if lora.get("modules_to_save"):
        raise UserError(
            f"{where}: the adapter also trains whole modules ({', '.join(lora['modules_to_save'])}), "
            f"which a llama.cpp LoRA file cannot hold; drop --adapter-only to export the merged model"
        )
    return lora


def _base_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the base weights, from the safetensors headers (no weights read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                shapes[k] = tuple(sf.get_slice(k).get_shape())
    return shapes


def _lora_pairs(weights: dict, where: str) -> dict[str, dict]:
    """{module: {"A": tensor, "B": tensor}} of an adapter's LoRA weights; anything else is refused."""
    pairs: dict[str, dict] = {}
    for key, t in weights.items():
        if ".lora_A." in key or ".lora_B." in key:
            module, ab = (
                key.split(".lora_A." if ".lora_A." in key else ".lora_B.")[0],
                "A" if ".lora_A." in key else "B",
            )
        else:
            what = "embedding LoRA" if "lora_embedding" in key else "tensor"
            raise UserError(
                f"{where}: {what} {key} cannot be written to a llama.cpp LoRA file; "
                f"drop --adapter-only to export the merged model"
            )
        module = module.removeprefix("base_model.model.")
        pairs.setdefault(module, {})[ab] = t
    return pairs


def _block_order(module: str):
    parts = module.split(".")
    nums = [int(p) for p in parts if p.isdigit()]
    return (nums[0] if nums else -1, module)


@dataclass
class ExportSpec:
    """What to export, as `tunesmith export`'s flags say it (the CLI fills one from its arguments)."""

    out: str
    model: str | None = None
    adapter: str | None = None
    format: str = "gguf"
    quant: str = "f16"
    adapter_only: bool = False
    verify: str | None = None  # a test file: run the written file against the PyTorch model on it
    verify_limit: int = 20
    max_new_tokens: int = 128
    style: str | None = None
    overwrite: bool = False
    registry: str | None = None
    trust_remote_code: bool = False


def export(args: ExportSpec) -> dict:
    """The whole workflow behind `tunesmith export`: check the flags and --out, write the GGUF file (a merged
    model, or a LoRA adapter for llama.cpp --lora), the Ollama Modelfile beside it, verify it through
    llama.cpp when asked, and enter it in the registry. Returns what was written (bytes, arch, verify)."""
    from transformers import AutoConfig

    if args.format != "gguf":
        raise UserError(f"--format {args.format}: only gguf is supported")
    for given in (args.adapter, args.model):
        if is_task_run(given):
            raise UserError(
                f"{given}: a run trained with --task: GGUF export does not apply (llama.cpp and Ollama run "
                "language models, not classification heads); `tunesmith merge` writes a standalone Hugging "
                "Face model of it, and `tunesmith predict` answers with it"
            )
    gguf_quant.check_quant(args.quant, adapter_only=args.adapter_only)
    if Path(args.out).suffix.lower() != ".gguf":
        raise UserError(f"--out {args.out}: expected a file name ending in .gguf")
    if args.adapter_only and not args.adapter:
        raise UserError("--adapter-only needs --adapter RUN_DIR (the adapter to write)")
    if args.verify and args.adapter_only:
        raise UserError("--verify checks a whole model: export the merged model (drop --adapter-only)")
    if args.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    checks = gguf_verify.check(args.verify, args.verify_limit, args.style) if args.verify else None
    spec = base_model_of(args.adapter, args.model)
    out = check_out(
        args.out, "gguf", overwrite=args.overwrite, inputs={"--adapter": args.adapter, "--model": spec}
    )
    modelfile.check_replaceable(out, args.overwrite)
    if args.adapter:
        adapter_config(args.adapter)
    where = f"--model {spec}"
    t0 = time.time()
    model_dir = resolve(spec, trust_remote_code=args.trust_remote_code)
    if args.adapter_only:
        r = export_lora(args.adapter, model_dir, out, args.quant, trust_remote_code=args.trust_remote_code)
        _register(args, out, spec, r, t0, "lora adapter")
        tok = load_tokenizer(model_dir, args.trust_remote_code)
        mf, why = modelfile.write_beside(tok, out, model=spec, adapter_of=spec)
        print(
            f"wrote {out} ({human_bytes(r['bytes'])}, {args.quant}, {r['arch']} LoRA adapter, r={r['r']}, "
            f"alpha {r['alpha']:g}) in {time.time() - t0:.0f}s"
        )
        modelfile.how_to_run(out, mf, why, base=f"{Path(spec).name}.gguf")
        return r
    # refuse an architecture or tokenizer we cannot describe before loading any weights
    gguf_arch.arch_of(
        AutoConfig.from_pretrained(str(model_dir), trust_remote_code=args.trust_remote_code), where
    )
    tokenizer_kind(tokenizer_json(load_tokenizer(model_dir, args.trust_remote_code)), where)
    loaded = load_fp32(spec, args.adapter, args.trust_remote_code)
    r = export_model(loaded.model, loaded.tokenizer, out, args.quant, name=out.stem, where=where)
    what = "merged" if args.adapter else "base model"
    mf, why = modelfile.write_beside(loaded.tokenizer, out, model=spec)
    print(
        f"wrote {out} ({human_bytes(r['bytes'])}, {args.quant}, {r['arch']}, {what}) in "
        f"{time.time() - t0:.0f}s"
    )
    if checks:
        v = gguf_verify.verify(loaded.model, loaded.tokenizer, out, args.quant, *checks, args.max_new_tokens)
        gguf_verify.report(v, out, args.verify)
        print(f"wrote {gguf_verify.write(v, out)}")
        r["verify"] = {k: v[k] for k in ("agreement", "tokenized_alike", "significant_drops", "examples")}
    _register(args, out, spec, r, t0, what)
    modelfile.how_to_run(out, mf, why)
    return r


def _register(args, out: Path, spec: str, r: dict, t0: float, what: str) -> None:
    result = {"bytes": r["bytes"], "arch": r["arch"], "quant": args.quant, "what": what}
    if "verify" in r:
        result["verify"] = r["verify"]
    config = {
        "adapter": args.adapter,
        "model": spec,
        "quant": args.quant,
        "adapter_only": bool(args.adapter_only),
    }
    register_output("export", out, adapter=args.adapter, model=spec, result=result, config=config, started=t0,
                    registry_path=args.registry)  # fmt: skip
