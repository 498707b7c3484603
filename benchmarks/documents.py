"""`tunesmith docs check` at scale, and the HTML readers it could use (issue 39, part 1).

Real text that nobody on the team wrote: the QMSum meeting transcripts in ../shared/data/qmsum (MIT).
Three measurements, each in a process of its own (peak memory is the process's high-water mark):

1. html: inscriptis, html2text and lxml's text_content on the same pages (every transcript as HTML,
   a paragraph per turn, a list of its topics, a script): MB/s, and whether the blocks survive (lines
   of text per turn) and the script is dropped.
2. folder: 10,000 files made from the transcripts (windows of 40 turns, as .txt, .md, .html, .docx and
   .pdf in turn): files/s, MB/s and peak RSS of `tunesmith docs check --json`, tokens counted.
3. big: one text file of --big-mb MB (the transcripts repeated): MB/s and peak RSS, to show it is not
   held whole.

    .venv/bin/python benchmarks/documents.py [--files 10000] [--big-mb 400] [--only html|folder|big]
"""

from __future__ import annotations

import argparse
import html as H
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# no benchmark run enters the registry of the person who runs it (TUNESMITH_BENCH_REGISTRY=PATH keeps them)
os.environ["TUNESMITH_REGISTRY"] = os.environ.get("TUNESMITH_BENCH_REGISTRY", "off")
ROOT = Path(__file__).resolve().parent.parent
QMSUM = ROOT.parent / "shared" / "data" / "qmsum"


def meetings() -> list[tuple[str, list[str]]]:
    if not QMSUM.is_dir():
        sys.exit(f"{QMSUM}: not found (the benchmark reads the QMSum transcripts of ../shared/data)")
    out = []
    for f in sorted(QMSUM.glob("*/*.json")):
        m = json.loads(f.read_text())
        out.append((f.stem, [f"{t['speaker']}: {t['content']}" for t in m["meeting_transcripts"]]))
    return out


def page(title: str, turns: list[str], topics: list[str]) -> str:
    body = "".join(f"<p>{H.escape(t)}</p>" for t in turns)
    items = "".join(f"<li>{H.escape(t)}</li>" for t in topics)
    head = f"<head><title>{H.escape(title)}</title><style>p{{margin:0}}</style></head>"
    script = "<script>var zq7marker = 1;</script>"
    return f"<html>{head}<body><h1>{H.escape(title)}</h1><ul>{items}</ul>{body}{script}</body></html>"


def pdf(lines: list[str]) -> bytes:
    """A PDF with a text layer: 50 lines a page, Helvetica (the test's writer, with line breaks)."""

    def esc(s: str) -> str:
        s = s.encode("latin-1", "replace").decode("latin-1")
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    objs = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        None,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for s in range(0, len(lines), 50):
        ops = " ".join(f"({esc(x[:120])}) Tj T*" for x in lines[s : s + 50])
        stream = f"BT /F1 9 Tf 11 TL 30 760 Td {ops} ET"
        objs.append(f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objs)} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>"
        )
        kids.append(f"{len(objs)} 0 R")
    objs[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    return out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def build_folder(folder: Path, n: int) -> int:
    import docx

    folder.mkdir(parents=True)
    kinds = [".txt", ".md", ".html", ".docx", ".pdf"]
    windows = [(name, turns[s : s + 40]) for name, turns in meetings() for s in range(0, len(turns), 40)]
    made = 0
    while made < n:
        name, turns = windows[made % len(windows)]
        if made >= len(windows):  # past one pass: a different window of the same meeting, not a copy
            turns = turns[made // len(windows) :]
        kind = kinds[made % len(kinds)]
        f = folder / f"{made // 1000:02d}" / f"{name}-{made}{kind}"
        f.parent.mkdir(exist_ok=True)
        if kind in (".txt", ".md"):
            f.write_text("\n".join(turns))
        elif kind == ".html":
            f.write_text(page(name, turns, turns[:3]))
        elif kind == ".docx":
            d = docx.Document()
            for t in turns:
                d.add_paragraph(t)
            d.save(f)
        else:
            f.write_bytes(pdf(turns))
        made += 1
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed")
    return {"s": time.perf_counter() - t0, "peak_mib": usage.ru_maxrss / 1024, "out": out}


HTML_READERS = {
    "inscriptis": "from inscriptis import get_text as f",
    "html2text": "import html2text\nh = html2text.HTML2Text(); h.body_width = 0\nf = h.handle",
    "lxml text_content": "import lxml.html\nf = lambda s: lxml.html.fromstring(s).text_content()",
}


def html_readers(folder: Path) -> list[str]:
    pages = []
    for name, turns in meetings():
        pages.append(page(name, turns, turns[:3]))
    src = folder / "pages.json"
    src.write_text(json.dumps(pages))
    mb = sum(len(p.encode()) for p in pages) / 1e6
    rows = [
        "| Reader | MB/s | Peak MiB | Lines per turn | Script dropped |",
        "| --- | --- | --- | --- | --- |",
    ]
    turns = sum(len(t) for _, t in meetings())
    for name, setup in HTML_READERS.items():
        code = (
            f"import json, time\n{setup}\npages = json.load(open({str(src)!r}))\n"
            "t = time.perf_counter()\ntexts = [f(p) for p in pages]\n"
            "print(json.dumps([time.perf_counter() - t, "
            "sum(len([x for x in s.splitlines() if x.strip()]) for s in texts), "
            "sum('zq7marker' in s for s in texts)]))"
        )
        r = timed([sys.executable, "-c", code])
        s, lines, script = json.loads(r["out"])
        rows.append(
            f"| {name} | {mb / s:.2f} | {r['peak_mib']:.0f} | {lines / turns:.2f} | "
            f"{'yes' if script == 0 else f'no ({script} pages)'} |"
        )
    return [f"{len(pages)} pages, {mb:.1f} MB of HTML", *rows]


def check(folder: Path, mb: float, label: str) -> list[str]:
    r = timed([sys.executable, "-m", "tunesmith.cli", "docs", "check", str(folder), "--json"])
    rep = json.loads(r["out"])
    return [
        f"{label}: {rep['read']} read, {rep['skipped']} skipped, {rep['tokens']:,} tokens, "
        f"{rep['chars']:,} characters; {r['s']:.0f} s in all ({rep['files_per_s']} files/s, "
        f"{mb / r['s']:.2f} MB/s of files), peak RSS {r['peak_mib']:.0f} MiB; "
        f"{len(rep['exact_duplicates'])} exact, {len(rep['near_duplicates'])} near duplicate pairs"
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--big-mb", type=int, default=400)
    ap.add_argument("--only", choices=("html", "folder", "big"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only in (None, "html"):
            print("\n".join(html_readers(work)), flush=True)
        if args.only in (None, "folder"):
            mb = build_folder(work / "folder", args.files) / 1e6
            print("\n".join(check(work / "folder", mb, f"{args.files} files ({mb:.0f} MB)")), flush=True)
        if args.only in (None, "big"):
            big = work / "big" / "all.txt"
            big.parent.mkdir()
            text = "\n".join("\n".join(t) for _, t in meetings()).encode()
            with open(big, "wb") as f:
                for _ in range(max(1, args.big_mb * 10**6 // len(text))):
                    f.write(text)
            mb = big.stat().st_size / 1e6
            print("\n".join(check(big.parent, mb, f"one text file of {mb:.0f} MB")), flush=True)


if __name__ == "__main__":
    main()
