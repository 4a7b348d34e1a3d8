"""data.py: sources, document split, vocabulary trimming and the errors a user sees."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
from plumbing import sources
from plumbing.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def docs_of(bin_path, dtype, eot):
    arr = np.fromfile(bin_path, dtype=dtype)
    assert arr[-1] == eot  # every document, the last included, ends with end-of-text
    cuts = np.flatnonzero(arr == eot)
    return [arr[s + 1 : e] for s, e in zip(np.append(-1, cuts[:-1]), cuts)]


def test_cl100k_ids_are_the_published_ones():
    enc = data.cl100k()
    assert enc.n_vocab == 100_277 and enc.eot_token == 100_257
    assert enc.encode_ordinary("Hello world") == [9906, 1917]


def test_txt_documents_split_on_endoftext_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("first doc\nstill first\n<|endoftext|>\nsecond doc\n")
    assert list(sources.read_documents(p)) == ["first doc\nstill first\n", "second doc\n"]
    q = tmp_path / "b.txt"
    q.write_text("no separator at all\nso one document\n")
    assert len(list(sources.read_documents(q))) == 1


def test_jsonl_gz_and_directory_sources(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n')
    with gzip.open(tmp_path / "d" / "b.jsonl.gz", "wt") as f:
        f.write('{"body": "three"}\n')
    files = sources.source_files(str(tmp_path / "d"))
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl.gz"]
    docs = [d for f in files for d in sources.read_documents(f, "body")]
    assert docs == ["one", "two", "three"]


def test_full_vocabulary_prepare(tmp_path, corpus_txt):
    meta = data.prepare([str(corpus_txt)], tmp_path, vocab_size=None, val_fraction=0.1)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 100_278
    assert meta["mask_id"] == 100_277 and meta["eot_id"] == 100_257 and meta["unk_id"] is None
    assert meta["train_docs"] == 108 and meta["val_docs"] == 12  # 10% of 120, whole documents
    assert len(meta["sources"][0]["sha256"]) == 64
    docs = list(sources.read_documents(corpus_txt))
    tok = data.Tokenizer(meta, tmp_path)
    val_docs = [tok.decode(d) for d in docs_of(tmp_path / "val.bin", np.uint32, meta["eot_id"])]
    assert val_docs == [d for i, d in enumerate(docs) if data.is_val(i, 0.1)]  # whole documents, in order
    on_disk = json.loads((tmp_path / "meta.json").read_text())
    assert on_disk["train_tokens"] == len(np.fromfile(tmp_path / "train.bin", dtype=np.uint32))


def test_split_is_deterministic_and_by_documents(tmp_path, corpus_txt):
    a = data.prepare([str(corpus_txt)], tmp_path / "a", val_fraction=0.05)
    b = data.prepare([str(corpus_txt)], tmp_path / "b", val_fraction=0.05)
    assert (tmp_path / "a" / "val.bin").read_bytes() == (tmp_path / "b" / "val.bin").read_bytes()
    assert a["val_docs"] == 6 and a["train_docs"] + a["val_docs"] == 120
    assert [data.is_val(i, 0.25) for i in range(8)] == [False, False, False, True] * 2


def test_trimmed_vocabulary_roundtrip(tmp_path, corpus_txt):
    meta = data.prepare([str(corpus_txt)], tmp_path, vocab_size=64, val_fraction=0.1)
    assert meta["dtype"] == "uint16" and (meta["eot_id"], meta["unk_id"], meta["mask_id"]) == (0, 1, 2)
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    assert train.max() < 64 and (train == 2).sum() == 0  # the mask id is reserved, never in text
    tok = data.Tokenizer(meta, tmp_path)
    kept = np.load(tmp_path / "vocab_map.npy")
    assert len(kept) == 64 and (kept[:3] == -1).all()
    common = data.cl100k().decode([int(kept[3]), int(kept[4])])  # two of the most frequent tokens
    assert tok.decode(tok.encode(common)) == common
    ids = tok.encode(" zyzzyva quixotic")  # not in the corpus: unknown
    assert (ids == 1).all() and tok.decode(ids[:1]) == "<unk>"


@pytest.mark.parametrize("content,name,err", [
    ('{"text": "ok"}\nnot json\n', "bad.jsonl", r"bad.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n{"title": "no text"}\n', "nofield.jsonl", r"nofield.jsonl:2: no string field 'text'"),
    ("hello", "notes.md", r"notes.md: unknown extension"),
    ("", "empty.txt", r"the corpus is empty"),
])
def test_bad_inputs_raise_one_actionable_error(tmp_path, content, name, err):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=err):
        data.prepare([str(tmp_path / name)], tmp_path / "out")


def test_missing_source_and_bad_flags(tmp_path, corpus_txt):
    with pytest.raises(UserError, match="no such file"):
        data.prepare([str(tmp_path / "nope.txt")], tmp_path / "out")
    with pytest.raises(UserError, match="--vocab-size"):
        data.prepare([str(corpus_txt)], tmp_path / "out", vocab_size=2)
    with pytest.raises(UserError, match="--val-fraction"):
        data.prepare([str(corpus_txt)], tmp_path / "out", val_fraction=1.5)


def test_unreachable_url_names_it_and_suggests_a_local_source(tmp_path):
    url = "http://127.0.0.1:9/TinyStoriesV2-GPT4-train.txt"  # nothing listens on the discard port
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:9/.*offline\? .*python data.py --source PATH --out-dir DIR"):
        sources.download(url, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def test_cli_error_is_one_line_not_a_traceback(tmp_path):
    r = subprocess.run([sys.executable, "data.py", "--source", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "missing.jsonl" in r.stderr


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
@pytest.mark.parametrize("vocab_size", [None, 4096])
def test_round_trip_text_to_bins_and_back(tmp_path, fmt, vocab_size):
    docs = ["The river ran past the old mill.\nIt was cold.", "Grace painted the bridge in Oslo.",
            "Numbers too: 1,234 and 3.5%!", "A last, short one."] * 3
    if fmt == "txt":
        src = tmp_path / "c.txt"
        src.write_text("\n<|endoftext|>\n".join(docs))
        docs = [d + "\n" for d in docs[:-1]] + [docs[-1]]  # the separator line's newline stays with the text
    else:
        src = tmp_path / "c.jsonl"
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    meta = data.prepare([str(src)], tmp_path / "out", vocab_size=vocab_size, val_fraction=0.25)
    tok = data.Tokenizer(meta, tmp_path / "out")
    dtype = np.dtype(meta["dtype"])
    train = [tok.decode(d) for d in docs_of(tmp_path / "out" / "train.bin", dtype, meta["eot_id"])]
    val = [tok.decode(d) for d in docs_of(tmp_path / "out" / "val.bin", dtype, meta["eot_id"])]
    assert val == [d for i, d in enumerate(docs) if data.is_val(i, 0.25)]
    assert train == [d for i, d in enumerate(docs) if not data.is_val(i, 0.25)]
