"""Reading one document of a team's folder as text, in parts (pages, or blocks of a long text file), or
saying in one line why it cannot be read. Seed 001: "they may need to let AI read through the documents".

The readers are the maintained libraries for each format, each the smallest that does the job:
pypdf (pure Python; it reports encryption and has no native parts to build), python-docx (paragraphs
and tables, in document order) and, for HTML, inscriptis (lxml underneath; it keeps the page's block
layout, so paragraphs and list items stay on lines of their own, which chunking needs; see
benchmarks/RESULTS.md for how it compared with html2text and lxml's text_content). Plain text is
ours: it streams in blocks, so a 2 GB log is never held whole.

What makes a file unreadable is a `Skipped` with the reason a person can act on: encrypted, no text
layer (a scanned PDF), damaged, a zip that unpacks to far more than a document holds (a zip bomb
dressed as .docx), binary data, empty, gone while it was read. Text that is not UTF-8 is read as
Windows-1252 (every byte is a character there) and the report says so.
"""

from __future__ import annotations

import codecs
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT = {".txt", ".md", ".markdown", ".rst", ".text", ".csv", ".log"}
KINDS = {**{s: "text" for s in TEXT}, ".html": "html", ".htm": "html", ".xhtml": "html", ".pdf": "pdf",
         ".docx": "docx"}  # fmt: skip
BLOCK = 1 << 20  # bytes of a text file read at a time
MAX_HTML = 64 << 20  # an HTML page is parsed whole: larger ones are not pages
MAX_UNZIPPED = 256 << 20  # what a .docx may unpack to (a 500-page report with pictures is ~50 MB)
MAX_RATIO = 100  # unpacked / packed size of a .docx: text compresses ~5-10x, bombs ~1000x


class Skipped(Exception):
    """A file that is not read, and why (one line)."""


@dataclass
class Part:
    where: str  # "page 3", "bytes 0-1048576", "" for a whole document
    text: str


def kind_of(path: Path) -> str | None:
    return KINDS.get(path.suffix.lower())


def parts(path: Path, notes: list[str]) -> Iterator[Part]:
    """The document's text in order; raises Skipped. `notes` gets what the report should say besides."""
    kind = kind_of(path)
    if kind is None:
        raise Skipped(f"not a document type read here ({path.suffix or 'no extension'}); reads "
                      f"{', '.join(sorted(KINDS))}")  # fmt: skip
    try:
        if kind == "text":
            yield from _text(path, notes)
        elif kind == "pdf":
            yield from _pdf(path)
        elif kind == "docx":
            yield from _docx(path)
        else:
            yield from _html(path, notes)
    except FileNotFoundError:
        raise Skipped("gone while it was read") from None
    except PermissionError:
        raise Skipped("not readable (permission denied)") from None
    except IsADirectoryError:
        raise Skipped("a directory, not a file") from None
    except OSError as e:
        raise Skipped(f"could not be read ({e.strerror or e})") from None


def _text(path: Path, notes: list[str]) -> Iterator[Part]:
    """Blocks of BLOCK bytes, decoded incrementally (a character split across blocks is kept whole)."""
    for encoding in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(encoding)(
            errors="strict" if encoding == "utf-8" else "replace"
        )
        offset, out = 0, []
        try:
            with open(path, "rb") as f:
                while block := f.read(BLOCK):
                    nul = block.find(b"\x00")
                    if nul >= 0:
                        raise Skipped(f"binary data (a NUL byte at byte {offset + nul:,})")
                    text = decoder.decode(block)
                    out.append(Part(f"bytes {offset}-{offset + len(block)}", text))
                    offset += len(block)
                    if len(out) > 1 or encoding != "utf-8":
                        yield from out  # past the first block, or known to decode: stream
                        out = []
                out.append(Part(f"bytes {offset}-{offset}", decoder.decode(b"", final=True)))
        except UnicodeDecodeError as e:
            if offset > BLOCK:  # streamed already: say where, and give up on this file
                raise Skipped(f"not UTF-8 (an invalid byte near byte {offset + e.start:,})") from None
            notes.append("not UTF-8: read as Windows-1252")
            continue
        yield from out
        return


def _pdf(path: Path) -> Iterator[Part]:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings on a damaged file: the Skipped says it
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):  # many "encrypted" PDFs open with no password
            raise Skipped("encrypted (password-protected); save an unprotected copy to read it")
        pages = list(reader.pages)
    except Skipped:
        raise
    except FileNotDecryptedError:
        raise Skipped("encrypted (password-protected); save an unprotected copy to read it") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, AssertionError) as e:
        raise Skipped(f"damaged PDF ({str(e)[:100] or type(e).__name__})") from None
    found = 0
    for i, page in enumerate(pages, 1):
        try:
            text = page.extract_text() or ""
        except Exception as e:  # noqa: BLE001 -- pypdf raises many kinds on a broken page; the page is lost
            raise Skipped(f"damaged PDF (page {i}: {str(e)[:80] or type(e).__name__})") from None
        found += len(text.strip())
        yield Part(f"page {i}", text)
    if not found:
        raise Skipped(f"no text layer in {len(pages)} page(s) (a scanned PDF? run OCR on it first)")


def _docx(path: Path) -> Iterator[Part]:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except zipfile.BadZipFile:
        raise Skipped("damaged .docx (not a zip archive)") from None
    unpacked, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
    if unpacked > MAX_UNZIPPED or unpacked > MAX_RATIO * max(packed, 1) and unpacked > 1 << 20:
        raise Skipped(f"unpacks to {_size(unpacked)} from {_size(packed)} (a zip bomb?); not opened")
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise Skipped(f"damaged .docx ({str(e)[:100] or type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 -- lxml's XML errors and others: the file is not a Word document
        raise Skipped(f"damaged .docx ({type(e).__name__}: {str(e)[:80]})") from None
    lines = []
    for block in document.iter_inner_content():  # paragraphs and tables, in the document's order
        if hasattr(block, "rows"):
            lines += [" | ".join(c.text.strip() for c in row.cells) for row in block.rows]
        else:
            lines.append(block.text)
    yield Part("", "\n".join(lines))


def _html(path: Path, notes: list[str]) -> Iterator[Part]:
    size = path.stat().st_size
    if size > MAX_HTML:
        raise Skipped(f"{size / 2**20:,.0f} MiB of HTML: larger than a page (limit {MAX_HTML >> 20} MiB)")
    raw = path.read_bytes()
    try:
        markup = raw.decode("utf-8")
    except UnicodeDecodeError:
        markup = raw.decode("cp1252", errors="replace")
        notes.append("not UTF-8: read as Windows-1252")
    from inscriptis import get_text

    yield Part("", get_text(markup))


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 1 << 20 else f"{n / 1024:,.0f} KiB"
