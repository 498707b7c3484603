"""The tokenizer half of a GGUF file (tokenizer.ggml.* keys): the vocabulary with token types, the
merges, the pre-tokenizer llama.cpp must use (recognised from tokenizer.json's split regex), the
special tokens and the chat template. Apart from export.py, which writes the tensors."""

from __future__ import annotations

import json
import re

from tunesmith.errors import UserError
from tunesmith.export.merge import chat_template
from tunesmith.models.chat import adds_bos

# Pre-tokenizer regexes of Qwen2 and Llama-3 tokenizer.json files, and llama.cpp's name for each.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# OpenAI's o200k split as tiktoken-converted tokenizer.json files hold it (Phi-4-mini's); llama.cpp: "gpt-4o"
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe", _GPT4O_SPLIT: "gpt-4o"}
SPM_SPACE = "\u2581"  # sentencepiece's "▁", a space
_BYTE_PIECE = re.compile(r"^<0x[0-9A-F]{2}>$")


def tokenizer_json(tok) -> dict:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            "the model's tokenizer has no tokenizer.json (a 'fast' tokenizer); GGUF export needs one"
        )
    return json.loads(backend.to_str())


def bpe_pre(tj: dict, where: str) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for this byte-level BPE tokenizer's pre-tokenizer."""
    model, pre, norm = tj.get("model") or {}, tj.get("pre_tokenizer") or {}, tj.get("normalizer")
    pieces = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [p.get("type") for p in pieces]
    byte_level = pieces[-1] if pieces and kinds[-1] == "ByteLevel" else None
    found = None
    # NFC (Qwen2's normalizer) changes only text that is not already NFC; llama.cpp's converter skips it too
    if (
        model.get("type") == "BPE"
        and not model.get("byte_fallback")
        and (norm or {}).get("type") in (None, "NFC")
        and byte_level is not None
        and not byte_level.get("add_prefix_space")
    ):
        regex = byte_level.get("use_regex", True)
        if kinds == ["ByteLevel"] and regex:
            found = "gpt-2"
        elif kinds == ["Digits", "ByteLevel"] and pieces[0].get("individual_digits") and regex:
            found = "smollm"
        elif kinds == ["Split", "ByteLevel"] and not regex and _keeps_every_piece(pieces[0]):
            found = SPLIT_PRE.get((pieces[0].get("pattern") or {}).get("Regex"))
    if found is None:
        desc = f"{model.get('type')} model, pre-tokenizer {'+'.join(k or '?' for k in kinds) or 'none'}"
        if model.get("byte_fallback") or (norm or {}).get("type") not in (None, "NFC"):
            desc += ", sentencepiece-style"
        raise UserError(
            f"{where}: its tokenizer ({desc}) is not one GGUF export can describe to llama.cpp yet; "
            "supported are byte-level BPE tokenizers of the GPT-2, SmolLM, Qwen2, Llama-3 and GPT-4o "
            "(Phi-4-mini) kinds and sentencepiece-style BPE ones (Gemma, Llama 2). `tunesmith merge` writes "
            "a Hugging Face directory instead"
        )
    return found


def _keeps_every_piece(split: dict) -> bool:
    """A Split that keeps each match as a piece: "Isolated", or "Removed" inverted (tiktoken conversions
    write that); the same partition for these regexes, whose alternatives match every character."""
    behavior, invert = split.get("behavior"), bool(split.get("invert"))
    return (behavior == "Isolated" and not invert) or (behavior == "Removed" and invert)


def _space_to_meta(n: dict) -> bool:
    return (
        n.get("type") == "Replace" and n.get("pattern") == {"String": " "} and n.get("content") == SPM_SPACE
    )


def spm_space_prefix(tj: dict) -> bool | None:
    """For a sentencepiece-style BPE tokenizer (byte fallback, spaces written "▁"), whether it puts a "▁"
    before the text (Llama 2: yes; Gemma: no); None for any other tokenizer."""
    model, pre, norm = tj.get("model") or {}, tj.get("pre_tokenizer"), tj.get("normalizer")
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    norms = norm.get("normalizers", []) if norm and norm.get("type") == "Sequence" else [norm] if norm else []
    kinds = [n.get("type") for n in norms]
    if pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"String": " "}):
        if kinds == ["Replace"] and _space_to_meta(norms[0]):  # Gemma
            return False
        if (
            kinds == ["Prepend", "Replace"]
            and norms[0].get("prepend") == SPM_SPACE
            and _space_to_meta(norms[1])
        ):
            return True  # Llama 2 (legacy)
    if (pre or {}).get("type") == "Metaspace" and not norms and not pre.get("split", True):
        if pre.get("replacement") == SPM_SPACE:
            return pre.get("prepend_scheme", "always") in ("first", "always")
    return None


def tokenizer_kind(tj: dict, where: str) -> tuple[str, str]:
    """llama.cpp's tokenizer model (tokenizer.ggml.model) and pre-tokenizer for this tokenizer, or a
    UserError."""
    if spm_space_prefix(tj) is not None:
        return "llama", "default"
    return "gpt2", bpe_pre(tj, where)


def _spm_vocab(gguf, tj: dict, vocab_size: int, where: str):
    """Tokens, scores and types as llama.cpp's converter writes a sentencepiece vocabulary: byte pieces
    <0xNN> as BYTE (score 0), added tokens as CONTROL or USER_DEFINED (score -1000), the rest NORMAL with
    scores that fall with the id. llama.cpp's sentencepiece tokenizer merges the pair whose merged piece
    scores highest: the id order is the merge order a BPE tokenizer.json implies (transformers rebuilds
    Gemma's merges from it), so -id reproduces it (llama.cpp's own Gemma 3 file: scores fall with the id)."""
    tokens: list[str | None] = [None] * vocab_size
    scores = [-1000.0] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in tj["model"]["vocab"].items():
        _in_range(i, vocab_size, where)
        byte = _BYTE_PIECE.match(text) is not None
        tokens[i] = text
        types[i] = gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL
        scores[i] = 0.0 if byte else float(-i)
    return tokens, scores, types


def _in_range(i: int, vocab_size: int, where: str) -> None:
    if i >= vocab_size:
        raise UserError(f"{where}: tokenizer has token id {i}, beyond the model's vocab_size {vocab_size}")


def add_tokenizer(writer, tok, config, where: str) -> dict:
    import gguf

    vocab_size = config.vocab_size
    tj = tokenizer_json(tok)
    kind, pre = tokenizer_kind(tj, where)
    if kind == "llama":
        return _add_spm(gguf, writer, tok, tj, config, where)
    tokens: list[str | None] = [None] * vocab_size
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in tj["model"]["vocab"].items():
        if i >= vocab_size:
            raise UserError(
                f"{where}: tokenizer has token id {i}, beyond the model's vocab_size {vocab_size}"
            )
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for added in tj.get("added_tokens", []):
        i = added["id"]
        if i >= vocab_size:
            raise UserError(
                f"{where}: tokenizer has token id {i}, beyond the model's vocab_size {vocab_size}"
            )
        tokens[i] = added["content"]
        types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = tj["model"].get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    return _add_specials(writer, tok, config, {"pre": pre})


def _add_spm(gguf, writer, tok, tj: dict, config, where: str) -> dict:
    tokens, scores, types = _spm_vocab(gguf, tj, config.vocab_size, where)
    for added in tj.get("added_tokens", []):
        i = added["id"]
        _in_range(i, config.vocab_size, where)
        tokens[i] = added["content"]
        types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        scores[i] = -1000.0
    if str(config.model_type).startswith("gemma"):
        # Gemma's sentencepiece model defines its runs of 2-31 spaces as user-defined pieces, which
        # llama.cpp's converter writes as spaces; transformers reads them back as "▁▁"...
        # (gguf_tokenizer_mapping's gemma_tokenizer): undo that, as llama.cpp's own Gemma 3 file has them
        for i, t in enumerate(tokens):
            if t and len(t) > 1 and set(t) == {SPM_SPACE}:
                tokens[i], types[i], scores[i] = " " * len(t), gguf.TokenType.USER_DEFINED, -1000.0
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)])
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(bool(spm_space_prefix(tj)))
    return _add_specials(writer, tok, config, {"pre": "default"})


def _add_specials(writer, tok, config, meta: dict) -> dict:
    vocab_size = config.vocab_size
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tok, f"{kind}_token_id")
        if tid is None:  # as llama.cpp's converter does: the model config's id when the tokenizer has none
            tid = getattr(config, f"{kind}_token_id", None)
            tid = tid[0] if isinstance(tid, (list, tuple)) and tid else tid
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            getattr(writer, f"add_{kind}_token_id")(tid)
    add_bos = adds_bos(tok)  # llama.cpp adds BOS to a prompt exactly when tunesmith does (chat.prompt_ids)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template(tok))
    return {**meta, "add_bos": add_bos}


# llama.cpp keys one tokenizer rule on the file's general.name, not on the vocabulary: a name containing
# "phi-3" or "phi3" makes it strip the whitespace after every special token (Phi-3's added tokens rstrip in
# Hugging Face) and look up these four tokens, failing to load the file when one is missing
# (llama-vocab.cpp; measured with llama-cpp-python 0.3.36: "error loading model vocabulary:
# unordered_map::at" for a file named phi3.gguf whose vocabulary lacks "</s>").
_PHI3_NAMES = re.compile(r"phi-?3", re.IGNORECASE)
_PHI3_LOOKED_UP = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def llama_cpp_name(name: str, tok) -> str:
    """The general.name to write, so llama.cpp's name-keyed rule matches what the tokenizer does: a name
    like "phi3-notes" keeps the rule only for a tokenizer whose special tokens strip the whitespace after
    them and that has the four tokens llama.cpp looks up; otherwise it is written "phi_3-notes". A tokenizer
    that does strip gets " (phi3)" added to a name without it, or llama.cpp would keep that whitespace."""
    vocab = tok.get_vocab()
    special = [t for t in tok.added_tokens_decoder.values() if t.special and t.content not in _PHI3_LOOKED_UP]
    strips = bool(special) and all(t.rstrip for t in special) and all(t in vocab for t in _PHI3_LOOKED_UP)
    if _PHI3_NAMES.search(name) and not strips:
        return _PHI3_NAMES.sub(lambda m: m.group(0).replace("-", "")[:3] + "_3", name)
    if strips and not _PHI3_NAMES.search(name):
        return f"{name} (phi3)"
    return name
