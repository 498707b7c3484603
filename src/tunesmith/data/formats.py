"""Read example files and normalize every supported shape to a chat: a list of messages.

Files: JSONL, JSON (a list), CSV, Parquet, and folders of them; a folder holding `inputs/`
and `outputs/` is read as plain-text pairs matched by file name.
Shapes: chat {"messages": [...]}, {"prompt", "completion"}, alpaca {"instruction", "input",
"output"}, sharegpt {"conversations": [{"from", "value"}]}, preference {"prompt", "chosen",
"rejected"}. Extra top-level keys are kept as metadata (e.g. "meeting" for grouping).
Locations: the line for JSONL, the item for JSON, the row for CSV/Parquet (header = row 1
in CSV), the file for folder pairs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from tunesmith.data.records import Example, Issue, ReadOptions
from tunesmith.data.shapes import SHAPES, detect, normalize
from tunesmith.errors import UserError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt", ".md")


# ---------------------------------------------------------------- identity


def messages_digest(messages: list[dict], extra: str | None = None) -> int:
    """64-bit digest of a list of messages (roles and contents)."""
    h = hashlib.blake2b(digest_size=8)
    for m in messages:
        h.update(m["role"].encode())
        h.update(b"\x00")
        h.update(m["content"].encode())
        if m.get("tool_calls"):  # the calls are the turn (absent elsewhere: digests of other chats unchanged)
            h.update(json.dumps(m["tool_calls"], sort_keys=True).encode())
        h.update(b"\x01")
    if extra is not None:
        h.update(extra.encode())
    return int.from_bytes(h.digest(), "little")


# ---------------------------------------------------------------- files


def is_pairs_dir(p: Path) -> bool:
    return p.is_dir() and (p / "inputs").is_dir() and (p / "outputs").is_dir()


def data_files(path: str | Path) -> list[Path]:
    """Files (or pair folders) to read, in a stable order."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or directory")
    if is_pairs_dir(p):
        return [p]
    if p.is_dir():
        found: list[Path] = []
        for sub in sorted(p.rglob("*")):
            if is_pairs_dir(sub):
                found.append(sub)
            elif sub.is_file() and sub.suffix in SUFFIXES and not any(is_pairs_dir(a) for a in sub.parents):
                found.append(sub)
        if not found:
            raise UserError(
                f"{p}: folder holds no .jsonl, .json, .csv or .parquet files, nor inputs/ + outputs/ folders"
            )
        return found
    if p.suffix not in SUFFIXES:
        raise UserError(
            f"{p}: unsupported file type {p.suffix or '(none)'}; expected .jsonl, .json, .csv, .parquet "
            "or a folder with inputs/ and outputs/"
        )
    return [p]


def files_of(path: str | Path) -> list[Path]:
    """Every file the data at `path` is read from (pair folders opened up): what a checksum must cover."""
    out: list[Path] = []
    for f in data_files(path):
        out += sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
    return out


def locate_paths(data: str, val: str | None) -> tuple[Path, Path | None]:
    """--data DIR (train.jsonl + val.jsonl) or FILE, and an optional --val FILE."""
    d = Path(data)
    if d.is_dir():
        train = d / "train.jsonl"
        if not train.is_file():
            raise UserError(f"--data {d}: folder has no train.jsonl (expected train.jsonl and val.jsonl)")
        v = (
            Path(val)
            if val
            else next((d / n for n in ("val.jsonl", "validation.jsonl") if (d / n).is_file()), None)
        )
    else:
        if not d.exists():
            raise UserError(f"--data {d}: no such file or directory")
        train, v = d, Path(val) if val else None
    if v is not None and not v.exists():
        raise UserError(f"--val {v}: no such file")
    return train, v


def read_records(path: Path, opts: ReadOptions | None = None) -> Iterator[tuple[int, object]]:
    """(location, parsed object) for each record; problems come back as Issue objects."""
    opts = opts or ReadOptions()
    if path.is_dir():
        yield from _read_pairs(path, opts)
        return
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        yield 0, Issue(str(path), 0, "", "not a regular file (a pipe, socket or device); give a file")
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        yield 0, Issue(str(path), 0, "", f"cannot read file ({e.strerror})")
        return
    with f:
        start = f.read(4)
        f.seek(0)
        if path.suffix != ".parquet" and (wide := _wide_encoding(start)):
            yield (
                0,
                Issue(
                    str(path),
                    0,
                    "",
                    f"the file is {wide} (it starts with a {wide} byte-order mark); save it as UTF-8",
                ),
            )
            return
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path, f)
        elif path.suffix == ".json":
            yield from _read_json(path, f.read())
        elif path.suffix == ".csv":
            yield from _read_csv(path, f.read())
        else:
            yield from _read_parquet(path)


def _wide_encoding(start: bytes) -> str | None:
    if start.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if start.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    return None


def parse_json(text: str):
    """json.loads, with nesting deeper than the interpreter's recursion limit reported as invalid JSON
    (json.loads raises RecursionError there, which is not a JSONDecodeError)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _read_jsonl(path: Path, f) -> Iterator[tuple[int, object]]:
    for n, raw in enumerate(f, 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as JSON and CSV accept
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, Issue(str(path), n, "", f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})")
            continue
        try:
            yield n, parse_json(text)
        except json.JSONDecodeError as e:
            yield n, Issue(str(path), n, "", f"invalid JSON: {e.msg} (column {e.colno})")


def _line_of(raw: bytes, offset: int) -> int:
    return raw.count(b"\n", 0, offset) + 1


def _decode(path: Path, raw: bytes) -> str | Issue:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = _line_of(raw, e.start)
        return Issue(str(path), line, "", f"not UTF-8 (byte {raw[e.start]:#04x})")


def _read_json(path: Path, raw: bytes) -> Iterator[tuple[int, object]]:
    text = _decode(path, raw)
    if isinstance(text, Issue):
        yield text.line, text
        return
    try:
        data = parse_json(text)
    except json.JSONDecodeError as e:
        yield e.lineno, Issue(str(path), e.lineno, "", f"invalid JSON: {e.msg} (column {e.colno})")
        return
    if isinstance(data, dict) and detect(data) is None:
        data = next((v for v in data.values() if isinstance(v, list)), data)  # {"data": [...]}
    if not isinstance(data, list):
        data = [data]
    yield from enumerate(data, 1)  # for .json, the "line" is the item number


def _read_csv(path: Path, raw: bytes) -> Iterator[tuple[int, object]]:
    # the default, 128 KB, refuses a long transcript in one cell
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = _decode(path, raw)
    if isinstance(text, Issue):
        yield text.line, text
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        yield 1, Issue(str(path), 1, "", "empty CSV (no header row)")
        return
    row_no = 1
    try:
        for row in reader:
            row_no += 1
            if None in row:
                yield (
                    row_no,
                    Issue(str(path), row_no, "", f"{len(row[None])} more value(s) than header columns"),
                )
                continue
            yield row_no, {k: _csv_value(k, v) for k, v in row.items() if k}
    except csv.Error as e:
        yield row_no + 1, Issue(str(path), row_no + 1, "", f"invalid CSV: {e}")


def _csv_value(key: str, value):
    """CSV cells are strings; list-valued columns (messages, conversations) hold JSON."""
    if key in ("messages", "conversations") and isinstance(value, str):
        try:
            return parse_json(value)
        except json.JSONDecodeError:
            return value
    return value


def _read_parquet(path: Path) -> Iterator[tuple[int, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading Parquet needs pyarrow: pip install 'tunesmith[parquet]'") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several kinds for a broken file
        yield 0, Issue(str(path), 0, "", f"cannot read Parquet ({e})")
        return
    n = 0
    try:  # one row group at a time: a damaged page is then reported at its own group's first row
        for g in range(table.num_row_groups):
            for batch in table.read_row_group(g).to_batches(max_chunksize=4096):
                for row in batch.to_pylist():
                    n += 1
                    yield n, row
    except Exception as e:  # a damaged page: pyarrow raises OSError, ArrowInvalid, ... mid-file
        yield (
            n + 1,
            Issue(str(path), n + 1, "", f"cannot read Parquet from this row on ({type(e).__name__}: {e})"),
        )


def _read_pairs(folder: Path, opts: ReadOptions) -> Iterator[tuple[int, object]]:
    def by_name(d: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(d.iterdir()) if p.is_file() and p.suffix in TEXT_SUFFIXES}

    inputs, outputs = by_name(folder / "inputs"), by_name(folder / "outputs")
    for name in sorted(set(inputs) | set(outputs)):
        if name not in outputs:
            yield 0, Issue(str(inputs[name]), 0, "", f"no matching outputs/{name}.txt or .md")
            continue
        if name not in inputs:
            yield 0, Issue(str(outputs[name]), 0, "", f"no matching inputs/{name}.txt or .md")
            continue
        texts = []
        for p in (inputs[name], outputs[name]):
            t = _decode(p, p.read_bytes())
            if isinstance(t, Issue):
                yield 0, Issue(str(p), 0, "", t.message)
                break
            texts.append(t)
        else:
            try:
                prompt = opts.template.format(input=texts[0], name=name)
            except (KeyError, IndexError, ValueError) as e:
                raise UserError(f"--template: only {{input}} and {{name}} may be used ({e})") from None
            msgs = [{"role": "system", "content": opts.system}] if opts.system else []
            msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": texts[1]}]
            yield (0, {"messages": msgs, "source": name, "_path": str(inputs[name])})


# ---------------------------------------------------------------- a data set's own field names

LABEL_KEYS = ("label", "labels", "target")


def remap(obj, opts: ReadOptions) -> tuple[dict | None, list[tuple[str, str, str]]]:
    """A record under its own column names, renamed to ours (--text-field review, --label-field stars ...),
    and with --template the text (labelled) or the prompt (otherwise) built from its fields."""
    if not isinstance(obj, dict) or not (opts.fields or opts.record_template):
        return obj, []
    out = dict(obj)
    for ours, theirs in opts.fields.items():
        if theirs not in obj:
            return None, [
                (
                    "error",
                    theirs,
                    f"missing (--{ours}-field {theirs}); the record has {', '.join(sorted(obj))}",
                )
            ]
        value = out.pop(theirs)
        if ours == "label" and isinstance(value, str) and value.strip().startswith("["):
            try:  # a CSV cell holding a JSON list of classes
                value = json.loads(value)
            except ValueError:
                pass
        if ours == "label" and isinstance(value, list):
            ours = "labels"
        out[ours] = value
    if opts.record_template:
        try:
            text = opts.record_template.format_map({k: "" if v is None else v for k, v in obj.items()})
        except KeyError as e:
            return None, [("error", str(e.args[0]), f"missing: --template names {{{e.args[0]}}}")]
        except (ValueError, IndexError) as e:
            raise UserError(
                f"--template {opts.record_template!r}: not a template of {{field}} names ({e})"
            ) from None
        out["text" if any(k in out for k in LABEL_KEYS) else "prompt"] = text
    return out, []


# ---------------------------------------------------------------- whole data sets


def iter_examples(
    path: str | Path, opts: ReadOptions | None = None
) -> Iterator[tuple[Example | None, list[Issue]]]:
    """Every record of a file or folder: (example or None, its issues)."""
    opts = opts or ReadOptions()
    if opts.format is not None and opts.format not in SHAPES:
        raise UserError(f"--format {opts.format!r}: expected one of {', '.join(SHAPES)}")
    for f in data_files(path):
        seen = 0
        for line, obj in read_records(f, opts):
            seen += 1
            if isinstance(obj, Issue):
                yield None, [obj]
                continue
            # `_path` is where a folder pair's record came from; in a data file it is just an unknown key
            where = str(obj.pop("_path")) if f.is_dir() and isinstance(obj, dict) else str(f)
            obj, mapped = remap(obj, opts) if not f.is_dir() else (obj, [])
            ex, problems = (None, mapped) if mapped else normalize(obj, opts.format)
            issues = [Issue(where, line, fld, msg, lvl) for lvl, fld, msg in problems]
            if ex is not None:
                ex.path, ex.line = where, line
            yield ex, issues
        if not seen:
            yield None, [Issue(str(f), 0, "", "no examples: the file is empty or holds only blank lines")]


def load_examples(
    path: str | Path, what: str = "--data", opts: ReadOptions | None = None, kind: str | None = "chat"
) -> list[Example]:
    """All examples of a file or folder; any error prints the report and stops."""
    examples: list[Example] = []
    errors: list[Issue] = []
    for ex, issues in iter_examples(path, opts):
        errors += [i for i in issues if i.level == "error"]
        if ex is not None:
            examples.append(ex)
    if errors:
        import sys

        for i in errors[:20]:
            print(i, file=sys.stderr)
        more = f" (first 20 shown; run `tunesmith data check {path}` for all)" if len(errors) > 20 else ""
        raise UserError(f"{what} {path}: {len(errors)} problem(s){more}; fix them and run again")
    if not examples:
        raise UserError(f"{what} {path}: no examples found")
    labelled = next((e for e in examples if e.label is not None), None)
    if kind == "label":
        other = next((e for e in examples if e.label is None), None)
        if other is not None:
            raise UserError(
                f"{what} {other.path}:{other.line}: --task trains on labelled examples (text with label, "
                "labels or target), and this is a chat"
            )
        return examples
    if kind in ("chat", "graded") and labelled is not None:
        raise UserError(
            f"{what} {labelled.path}:{labelled.line}: a labelled example (text and {labelled.kind} label): "
            "train it with --task classify, multilabel or regress (text generation reads chats and prompts)"
        )
    if kind == "chat" and any(e.kind == "prompt" for e in examples):
        first = next(e for e in examples if e.kind == "prompt")
        raise UserError(
            f"{what} {first.path}:{first.line}: no assistant turn: a prompt-only row (as a reinforcement-"
            "tuning file has) trains with --method grpo and is scored by eval --grader; this needs answers"
        )
    if kind in ("chat", "graded") and any(e.kind == "preference" for e in examples):
        first = next(e for e in examples if e.kind == "preference")
        raise UserError(
            f"{what} {first.path}:{first.line}: preference pairs (prompt/chosen/rejected) are for "
            "preference training, not supervised fine-tuning; give chat or prompt/completion examples"
        )
    return examples
