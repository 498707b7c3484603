"""The one shared layer: load a model (+ adapter) and generate. Used by the CLI, eval and train."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import UserError
from tunesmith.files.outputs import RUN_INFO
from tunesmith.models.chat import prompt_ids, stop_token_ids
from tunesmith.models.kvcache import growing_cache, padding_costs, plain_cache, prefill_unpadded
from tunesmith.models.resolve import DEFAULT_MODEL, resolve
from tunesmith.models.weightfiles import check_safetensors


@dataclass
class Loaded:
    model: object
    tokenizer: object
    model_dir: Path
    model_spec: str
    adapter_dir: Path | None = None


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype():
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


LABELS_FILE = "labels.json"  # a run trained with --task (models/heads.py)


def is_task_run(path: str | Path | None) -> bool:
    """Whether a folder is a run trained with --task (a head that labels or scores, not text)."""
    return path is not None and (Path(path) / LABELS_FILE).is_file()


def check_adapter_dir(adapter: str | Path) -> Path:
    path = Path(adapter)
    if not path.is_dir():
        raise UserError(f"--adapter {adapter}: no such directory")
    if is_task_run(path):
        raise UserError(
            f"--adapter {adapter}: a run trained with --task (a head that labels or scores, not text); "
            f"use `tunesmith predict --adapter {adapter} FILE`"
        )
    if not (path / "adapter_config.json").is_file() and (path / "config.json").is_file():
        raise UserError(
            f"--adapter {adapter}: holds a whole model (method full or freeze), not an adapter; use --model "
            f"{adapter}"
        )
    if not (path / "adapter_config.json").is_file():
        raise UserError(
            f"--adapter {adapter}: no adapter_config.json; expected the run directory written by `tunesmith "
            "train`"
        )
    if not list(path.glob("adapter_model.safetensors")):
        raise UserError(
            f"--adapter {adapter}: no adapter_model.safetensors (pickle adapters are not loaded, for safety)"
        )
    check_safetensors(path / "adapter_model.safetensors")
    return path


def base_model_of(adapter: str | Path | None, model: str | None, default: str = DEFAULT_MODEL) -> str:
    """The one rule for which base model a command uses: --model wins; else the base model recorded in
    the adapter's run dir; else the default."""
    if model:
        return model
    if adapter:
        info = Path(adapter) / RUN_INFO
        if info.is_file():
            try:
                return str(json.loads(info.read_text())["model"])
            except (ValueError, KeyError, TypeError):
                raise UserError(
                    f"{info}: damaged (no base model recorded); pass --model to name the base model"
                ) from None
    return default


# What loading a model folder that is damaged or not what it claims raises (transformers, safetensors,
# tokenizers): each is a problem with the user's files, reported in one line naming the folder.
LOAD_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    UnicodeDecodeError,
)


def _why(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


def _shape_mismatch(model_dir: Path, trust_remote_code: bool) -> str | None:
    """Which weight does not fit config.json (transformers only logs it): the model is built on the
    meta device (no memory) and compared with the safetensors headers."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        want = {
            k: tuple(v.shape)
            for k, v in AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
            )
            .state_dict()
            .items()
        }
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                got = tuple(st.get_slice(k).get_shape())
                if k in want and want[k] != got:
                    return f"{f.name} holds {k} as {list(got)}, but config.json makes it {list(want[k])}"
    return None


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False, light: bool = False):
    """The model's tokenizer. `light` (for data commands) reads tokenizer.json without importing
    torch, which keeps `data check` on a large file within a few hundred MB of memory."""
    try:
        if light and not trust_remote_code and (Path(model_dir) / "tokenizer.json").is_file():
            from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as e:
        raise UserError(f"{model_dir}: cannot load its tokenizer ({_why(e)})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(model_spec: str, *, trust_remote_code: bool = False, dtype=None, quantize_4bit: bool = False):
    """-> (model, tokenizer, model_dir): the base model on the default device, in train mode."""
    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    extra = {}
    if quantize_4bit:  # QLoRA: NF4 weights, bf16 compute (CUDA only; checked by the caller)
        import torch
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        extra["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir),
            dtype=dtype or default_dtype(),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    except LOAD_ERRORS as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"{model_dir}: this model needs its own code; pass --trust-remote-code if you trust it"
            ) from None
        mismatch = _shape_mismatch(model_dir, trust_remote_code) if "mismatched_sizes" in str(e) else None
        raise UserError(f"{model_dir}: cannot load this model ({mismatch or _why(e)})") from None
    tok = load_tokenizer(model_dir, trust_remote_code)
    if not quantize_4bit:
        model.to(device())
    return model, tok, model_dir


def load(
    model_spec: str,
    adapter: str | Path | None = None,
    *,
    trust_remote_code: bool = False,
    dtype=None,
    quiet: bool = False,
    merge: bool = True,
) -> Loaded:
    """Base model (+ adapter) ready to generate: eval mode, no gradients.

    With `merge`, LoRA weights are folded into the base weights in memory (nothing is
    written): generation then runs at the base model's speed.
    """
    adapter_dir = check_adapter_dir(adapter) if adapter else None
    t0 = time.time()
    model, tok, model_dir = load_base(model_spec, trust_remote_code=trust_remote_code, dtype=dtype)
    if adapter_dir is not None:
        model = attach_adapter(model, adapter_dir, model_spec, merge)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if not quiet:
        print(
            f"loaded {model_spec}{' + ' + str(adapter_dir) if adapter_dir else ''} in "
            f"{time.time() - t0:.1f}s",
            file=sys.stderr,
        )
    return Loaded(model, tok, model_dir, model_spec, adapter_dir)


@dataclass
class Generation:
    text: str
    new_tokens: int
    stopped: bool  # ended with an end-of-turn/EOS token rather than running out of tokens
    prompt_tokens: int = 0  # what the prompt cost: its length in tokens


def left_padded(prompts: list[list[int]], pad_id: int):
    """Ids and attention mask of the prompts as one left-padded batch (generation appends on the right)."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, seq in enumerate(prompts):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def generate_ids(
    model,
    prompts: list[list[int]],
    *,
    pad_id: int,
    stop_ids: list[int],
    max_new_tokens: int | list[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_token: Callable[[int, int], bool] | None = None,
    should_stop: Callable[[int], bool] | None = None,
) -> list[tuple[list[int], bool]]:
    """One batch through `model.generate` (KV cache), prompts left-padded.

    Returns, per prompt, the new token ids (without the stop token) and whether it ended on a
    stop token. `on_token(row, id)` sees each kept token as it is made (streaming) and returns
    True to end that row (e.g. a stop string); `should_stop(row)` is asked every step (a
    cancelled or timed-out request). Rows also end at their own `max_new_tokens`.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    n = len(prompts)
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    stop_set = set(stop_ids)
    new: list[list[int]] = [[] for _ in range(n)]
    done, stopped = [False] * n, [False] * n

    class Rows(StoppingCriteria):
        # Called once per step with the sequences so far: the last column is the new token.
        def __call__(self, input_ids, scores, **kwargs):
            for row, t in enumerate(input_ids[:, -1].tolist()):
                if done[row]:
                    continue
                if t in stop_set:
                    done[row] = stopped[row] = True
                    continue
                new[row].append(t)
                if (on_token is not None and on_token(row, t)) or len(new[row]) >= limits[row]:
                    done[row] = True
            if should_stop is not None:
                for row in range(n):
                    if not done[row] and should_stop(row):
                        done[row] = True
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    ids, mask = left_padded(prompts, pad_id)
    width = ids.shape[1]
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    if seed is not None:
        torch.manual_seed(seed)
    dev = next(model.parameters()).device
    with torch.no_grad():
        cache = None
        if dev.type == "cpu" and plain_cache(model):
            reserve = max(limits) + 1
            cache = (
                prefill_unpadded(model, prompts, width, reserve)
                if padding_costs(prompts)
                else growing_cache(reserve)
            )
        model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            max_new_tokens=max(limits),
            eos_token_id=list(stop_set),
            pad_token_id=pad_id,
            stopping_criteria=StoppingCriteriaList([Rows()]),
            past_key_values=cache,
            **sampling,
        )
    return list(zip(new, stopped))


def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Generation]:
    """Batched generation with KV cache; prompts left-padded and grouped by length. Greedy unless
    `temperature` > 0 (then `seed` makes it repeatable); text is cut at the first `stop` string."""
    encoded = [prompt_ids(tokenizer, c) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(tokenizer)
    results: list[Generation | None] = [None] * len(encoded)
    done_tokens = 0
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        streams = [TextStream(tokenizer, stop) for _ in idx]
        outs = generate_ids(
            model,
            [encoded[i] for i in idx],
            pad_id=tokenizer.pad_token_id,
            stop_ids=stops,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=None if seed is None else seed + b,
            on_token=(lambda row, t: (streams[row].add(t), streams[row].hit_stop)[1])  # noqa: B023 (used in this call)
            if stop
            else None,
        )
        for i, stream, (kept, stopped) in zip(idx, streams, outs):
            if stop and stream.hit_stop:
                text, stopped = stream.text, True
            else:
                text = tokenizer.decode(kept, skip_special_tokens=True)
            results[i] = Generation(text.strip(), len(kept), stopped, len(encoded[i]))
            done_tokens += len(kept)
        if on_batch:
            on_batch(min(start + batch_size, len(order)), done_tokens)
    return results  # type: ignore[return-value]


def attach_adapter(model, adapter_dir: Path, model_spec: str, merge: bool = True):
    """The base model with a run's adapter on it (LoRA folded into the weights when `merge`)."""
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    except LOAD_ERRORS as e:
        raise UserError(f"--adapter {adapter_dir}: does not fit model {model_spec} ({_why(e)})") from None
    if merge and not model.active_peft_config.is_prompt_learning:
        model = model.merge_and_unload()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TextStream:
    """Token ids in, text out as it becomes final: holds back an incomplete UTF-8 character and
    any tail that could still grow into a stop string; cuts the text at the first stop string."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer, self.stop = tokenizer, [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""  # decoded so far (cut at a stop string once one is seen)
        self.sent = 0  # characters already handed out
        self.hit_stop = False

    def add(self, token_id: int) -> str:
        """The new final text after this token ('' if none yet)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return ""
        self.text = text
        for s in self.stop:
            at = text.find(s)
            if at != -1:
                self.text, self.hit_stop = text[:at], True
        hold = 0 if self.hit_stop else max((len(s) - 1 for s in self.stop), default=0)
        end = max(self.sent, len(self.text) - hold)
        out, self.sent = self.text[self.sent : end], end
        return out

    def flush(self) -> str:
        """The rest, at the end (an incomplete character included, as a plain decode would)."""
        if not self.hit_stop:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
