"""
Reading a corpus's sources for data.py: a URL (fetched once into the cache), a file or a
directory of .txt, .txt.gz, .jsonl and .jsonl.gz files, each file's documents, and the one-line
error for a file that is not UTF-8.
"""
import gzip
import hashlib
import json
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from plumbing.errors import UserError

CACHE_DIR = Path(os.environ.get("METALM_CACHE", Path.home() / ".cache" / "metalm"))
EOT_TEXT = "<|endoftext|>"


def download(url, cache_dir=CACHE_DIR):
    """Fetch url into the cache (once) with a progress bar; return the local path."""
    if url.startswith("file://"):
        return Path(urllib.request.url2pathname(url[len("file://"):]))
    dest = Path(cache_dir) / url.rstrip("/").split("/")[-1]
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=None) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot download {url} ({e.__class__.__name__}); offline? prepare a local copy (a .txt, "
                        ".jsonl or directory) with: python data.py --source PATH --out-dir DIR, then train "
                        "with --data-dir DIR") from None
    tmp.rename(dest)
    return dest


def source_files(src):
    """The files a --source names, in a fixed order."""
    if src.startswith(("http://", "https://", "file://")):
        src = str(download(src))
    p = Path(src)
    if not p.exists():
        raise UserError(f"--source {src}: no such file or directory")
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if not f.name.endswith((".txt", ".txt.gz", ".jsonl", ".jsonl.gz")):
            raise UserError(f"{f}: unknown extension; use .txt, .txt.gz, .jsonl or .jsonl.gz")
    if not files:
        raise UserError(f"--source {src}: directory holds no .txt/.jsonl/.jsonl.gz files")
    return files


def open_text(path):
    return (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8")


def not_utf8(path):
    """The UserError for a file that is not UTF-8, naming the first bad byte (found by decoding
    the whole file again: the decoder's own offset counts from its last buffer)."""
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        where = f" at byte {e.start:,} ({raw[e.start:e.start + 4]!r})"
    return UserError(f"{path} is not UTF-8 text{where}; re-encode it first, e.g. for Latin-1: iconv -f latin1 -t utf-8 "
                     f"FILE > FILE.utf8.txt (gunzip a .gz first), then give the new file")


def txt_separator(path):
    """How a .txt file separates its documents: "eot" when it has a line that is exactly
    <|endoftext|>, else "blank" (blank lines: paragraphs, speeches, stories)."""
    try:
        with open_text(path) as f:
            return "eot" if any(line.rstrip("\r\n") == EOT_TEXT for line in f) else "blank"
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_documents(path, text_field="text", sep="eot"):
    """Yield the documents of one file. A .txt (or .txt.gz) file is split at <|endoftext|> lines
    (sep "eot") or at runs of blank lines (sep "blank")."""
    try:
        yield from _read_documents(path, text_field, sep)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def _read_documents(path, text_field, sep):
    if path.name.endswith((".txt", ".txt.gz")):
        doc = []
        with open_text(path) as f:
            for line in f:
                end = line.rstrip("\r\n") == EOT_TEXT if sep == "eot" else not line.strip()
                if end:
                    if sep == "eot" or "".join(doc).strip():
                        yield "".join(doc)
                    doc = []
                else:
                    doc.append(line)
        if sep == "eot" or "".join(doc).strip():
            yield "".join(doc)
        return
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n}: not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise UserError(f"{path}:{n}: no string field {text_field!r} (use --text-field to name it)")
            yield obj[text_field]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
