"""
Universal NER v1 (Mayhew et al. 2024) as data: the 18 datasets (pinned commits), the IOB2
reader, finding a local copy or downloading one, aligning words to sub-tokens, batching, and
conlleval's entity-level micro P/R/F1. What eval_ner.py probes a checkpoint with; nothing here
knows about models.
"""
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

from plumbing.errors import UserError

LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
LABEL_ID = {t: i for i, t in enumerate(LABELS)}
UNER = {  # code -> (GitHub repo under UniversalNER/, commit, splits); the 18 UNER v1 datasets
    "ceb_gja": ("UNER_Cebuano-GJA", "336794a031b197e9f928c07a34926ee14f329ffe", "test"),
    "da_ddt": ("UNER_Danish-DDT", "983c4cdc09f8ece6069d2b692b60dc4b3649ec6e", "train dev test"),
    "de_pud": ("UNER_German-PUD", "47eb039b6d80079b280ba70efe4136413fb7af9c", "test"),
    "en_ewt": ("UNER_English-EWT", "8ed072de2fd24022cc62458997fe96a8fe191ea4", "train dev test"),
    "en_pud": ("UNER_English-PUD", "07ea0553144e3fcf3d6633efe2a075b725a0d262", "test"),
    "hr_set": ("UNER_Croatian-SET", "20dcb2ef6b6bf9d5e03605a74c4d87215a1574c1", "train dev test"),
    "pt_bosque": ("UNER_Portuguese-Bosque", "f2c2ad67aed900385fbe5d655af41f439c9b3333", "train dev test"),
    "pt_pud": ("UNER_Portuguese-PUD", "cda2cf86b68d45e896aab97ceca5e91d43a86db7", "test"),
    "ru_pud": ("UNER_Russian-PUD", "6f5acd6d728f70b20e4326d841356567796ee844", "test"),
    "sk_snk": ("UNER_Slovak-SNK", "886e7c6d7e066e23246af5070d115a036a465c6d", "train dev test"),
    "sr_set": ("UNER_Serbian-SET", "0d9685f001c10895572d844ef789c53dade0e265", "train dev test"),
    "sv_pud": ("UNER_Swedish-PUD", "7fed5e267858a295f53083051a16d73c76f60f07", "test"),
    "sv_talbanken": ("UNER_Swedish-Talbanken", "dbb692085267da83a35d1e1d2c111671b3c7c46b", "train dev test"),
    "tl_trg": ("UNER_Tagalog-TRG", "a80b309b5254d9d6afebebd7c65789eee3215256", "test"),
    "tl_ugnayan": ("UNER_Tagalog-Ugnayan", "69e95595b6b1f2354d0ba735f7ec9e36c18373e4", "test"),
    "zh_gsd": ("UNER_Chinese-GSD", "2a0c196d7a54d41119fd069874e976a58f0d7dad", "train dev test"),
    "zh_gsdsimp": ("UNER_Chinese-GSDSIMP", "1f0307599dece7b83f4cba90ce9b63ef37a7b162", "train dev test"),
    "zh_pud": ("UNER_Chinese-PUD", "647ba53747e1aa1818541965db99a0196440b7d2", "test"),
}


# ----------------------------------------------------------------------------- data

def read_iob2(path):
    """Sentences of a UNER file as (words, tags). Columns: id, token, tag, ...; '#' lines are
    comments; a blank line ends a sentence. OTH (not part of UNER v1) and stray B-O/I-O become O."""
    sents, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.startswith("#"):
                continue
            if not line.strip():
                if words:
                    sents.append((words, tags))
                words, tags = [], []
                continue
            cols = line.split("\t")
            if len(cols) < 3:
                raise UserError(f"{path}:{n}: expected tab-separated id, token, tag; got {line[:60]!r}")
            tag = cols[2]
            if tag.endswith(("-OTH", "-O")):
                tag = "O"
            if tag not in LABEL_ID:
                raise UserError(f"{path}:{n}: unknown tag {tag!r}; expected O or B-/I- with PER, ORG, LOC")
            words.append(cols[1])
            tags.append(tag)
    if words:
        sents.append((words, tags))
    return sents


def find_datasets(uner_dir):
    """{code: {split: path}} for DIR/<code>/{train,dev,test}*.iob2. A train file with a longer
    name (en_ewt's train.draft-0c7ce0d.iob2 in the local copy) is used when no train.iob2 exists."""
    root = Path(uner_dir)
    if not root.is_dir():
        raise UserError(f"--uner-dir {uner_dir}: no such directory (or pass --download)")
    found = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        splits = {}
        for split in ("train", "dev", "test"):
            files = [d / f"{split}.iob2"] if (d / f"{split}.iob2").exists() else sorted(d.glob(f"{split}*.iob2"))
            if files:
                splits[split] = files[0]
        if "test" in splits or "train" in splits:
            found[d.name] = splits
    if not found:
        raise UserError(f"--uner-dir {uner_dir}: no <code>/test.iob2 or train.iob2 found under it")
    return found


def download_uner(cache):
    for code, (repo, commit, splits) in tqdm(UNER.items(), desc="download UNER v1", disable=None):
        for split in splits.split():
            dest = Path(cache) / code / f"{split}.iob2"
            if not dest.exists():
                url = f"https://raw.githubusercontent.com/UniversalNER/{repo}/{commit}/{code}-ud-{split}.iob2"
                try:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    urllib.request.urlretrieve(url, dest.with_suffix(".part"))
                except OSError as e:
                    raise UserError(f"cannot download {url} ({e.__class__.__name__}); offline? pass --uner-dir "
                                   "with a local copy laid out as DIR/<code>/{train,dev,test}.iob2") from None
                dest.with_suffix(".part").rename(dest)
    return Path(cache)


def align(words, tags, tok, max_len):
    """Token ids of one sentence, each kept word's (first, end) token span, and its label id.
    Words that do not fit in max_len tokens are dropped (a cut word keeps its first tokens)."""
    ids, spans, labels = [], [], []
    for i, (w, t) in enumerate(zip(words, tags)):
        piece = [int(x) for x in tok.encode(w if i == 0 else " " + w)] or [tok.unk if tok.unk is not None else tok.eot]
        if len(ids) + 1 > max_len:
            break
        piece = piece[: max_len - len(ids)]
        spans.append((len(ids), len(ids) + len(piece)))
        ids += piece
        labels.append(LABEL_ID[t])
    return ids, spans, labels


def encode_set(sents, tok, max_len):
    return [dict(zip(("ids", "spans", "labels"), align(w, t, tok, max_len)), words=w, tags=t) for w, t in sents]


def batches(items, size, pad_id, device, order=None):
    """Right-padded (B, T) ids. A causal model never lets padding on the right change the hidden
    states of the real tokens before it."""
    order = range(len(items)) if order is None else order
    order = list(order)
    for s in range(0, len(order), size):
        chunk = [items[i] for i in order[s : s + size]]
        T = max(len(x["ids"]) for x in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for r, x in enumerate(chunk):
            ids[r, : len(x["ids"])] = torch.tensor(x["ids"])
        yield ids.to(device), chunk


# ----------------------------------------------------------------------------- scoring (conlleval)

def spans(tags):
    """Entities as (type, start, end). conlleval semantics: a chunk starts at B-X, or at I-X not
    continuing an X chunk; it ends at O, at any B-, or where the type changes."""
    out, start, typ = set(), None, None
    for i, t in enumerate(list(tags) + ["O"]):
        prefix, _, ty = t.partition("-")
        if start is not None and (prefix in ("B", "O") or ty != typ):
            out.add((typ, start, i))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, typ = i, ty
    return out


def prf(correct, n_gold, n_pred):
    p = correct / n_pred if n_pred else 0.0
    r = correct / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "n_gold": n_gold, "n_pred": n_pred}


def score(gold, pred):
    """Entity-level micro P/R/F1 over sentences of gold and predicted tag sequences, plus per type."""
    g = {(s, *e) for s, tags in enumerate(gold) for e in spans(tags)}
    p = {(s, *e) for s, tags in enumerate(pred) for e in spans(tags)}
    res = prf(len(g & p), len(g), len(p))
    types = sorted({e[1] for e in g | p})
    res["per_type"] = {t: prf(len({e for e in g & p if e[1] == t}), sum(e[1] == t for e in g),
                              sum(e[1] == t for e in p)) for t in types}
    return res
