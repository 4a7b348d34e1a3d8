"""
Universal NER probe (Mayhew et al. 2024, UNER v1) of a pretrained checkpoint.

    python eval_ner.py --ckpt out/vanilla/ckpt.pt --uner-dir ../shared/data/uner --train da_ddt --mode head
    python eval_ner.py --ckpt out/meta/ckpt.pt --download --train en_ewt --mode full --out r.json

    python eval_ner.py --ckpt out/run/ckpt_step*.pt ... --word-feature last --out r.json   # a trajectory

Protocol: words are tokenized with the checkpoint's own tokenizer; sentences are cut at --max-len
tokens; labels are BIO over PER/ORG/LOC. A linear head reads a word's final hidden state: by
default at its first sub-token, the paper's protocol (--word-feature first). In a causal model
that state has seen neither the rest of the word nor anything after it; --word-feature last
reads the last sub-token, which has seen the whole word, and mean averages them. --mode head
freezes the backbone (features computed once); --mode full fine-tunes everything. The head's
learning rate is chosen on the dev sets from --head-lr (a comma-separated grid). Every dataset
with a test file is scored with conlleval's entity-level micro P/R/F1 (implemented below).
Several --ckpt give one result each (--out r.json -> r_<checkpoint>.json).
"""
import argparse
import copy
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import checkpoint
import data as datalib
from model import ModelArgs, Transformer

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


class NERError(Exception):
    """Bad input the user can fix; the message names the file (and line) or flag."""


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
                raise NERError(f"{path}:{n}: expected tab-separated id, token, tag; got {line[:60]!r}")
            tag = cols[2]
            if tag.endswith(("-OTH", "-O")):
                tag = "O"
            if tag not in LABEL_ID:
                raise NERError(f"{path}:{n}: unknown tag {tag!r}; expected O or B-/I- with PER, ORG, LOC")
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
        raise NERError(f"--uner-dir {uner_dir}: no such directory (or pass --download)")
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
        raise NERError(f"--uner-dir {uner_dir}: no <code>/test.iob2 or train.iob2 found under it")
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
                    raise NERError(f"cannot download {url} ({e.__class__.__name__}); offline? pass --uner-dir "
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


# ----------------------------------------------------------------------------- probe

def word_states(model, ids, chunk, feature):
    """(n_words, d): each kept word's final hidden state at its first sub-token, at its last, or
    their mean (--word-feature), for the sentences of one batch, in order."""
    h = model(ids, hidden=True).float()  # (B, T, d)
    r = torch.tensor([i for i, x in enumerate(chunk) for _ in x["spans"]], device=ids.device)
    s, e = (torch.tensor([sp[k] for x in chunk for sp in x["spans"]], device=ids.device) for k in (0, 1))
    if feature == "first":
        return h[r, s]
    if feature == "last":
        return h[r, e - 1]
    cs = F.pad(h.cumsum(1), (0, 0, 1, 0))  # (B, T+1, d): cs[:, t] = sum of the first t states
    return (cs[r, e] - cs[r, s]) / (e - s).unsqueeze(1)


def sentence_features(model, items, pad_id, device, desc, feature):
    """Per sentence, the (kept words, d) features of a frozen model, in the order of items."""
    model.eval()
    out = []
    with torch.no_grad():
        for ids, chunk in tqdm(batches(items, 64, pad_id, device), desc=desc, leave=False, disable=None,
                               total=-(-len(items) // 64)):
            out += list(word_states(model, ids, chunk, feature).split([len(x["spans"]) for x in chunk]))
    return out


def predict(head, feats, items):
    """Per-word tags for each sentence; words cut off by --max-len are predicted O."""
    with torch.no_grad():
        return [[LABELS[i] for i in head(f).argmax(-1).tolist()] + ["O"] * (len(x["words"]) - len(x["spans"]))
                for f, x in zip(feats, items)]


def probe(model, train_items, dev_items, a, pad_id, device, head_lr, feats=None):
    """Train the linear head (and in full mode the backbone) at one head learning rate; keep the
    epoch that is best on dev (or the last epoch when there is no dev set). feats: the frozen
    model's (train, dev) features in head mode. Returns the head and its best dev F1."""
    g = torch.Generator().manual_seed(a.seed)
    torch.manual_seed(a.seed)
    head = torch.nn.Linear(model.args.d_model, len(LABELS)).to(device)
    groups = [{"params": head.parameters(), "lr": head_lr}]
    if a.mode == "full":
        groups.append({"params": model.parameters(), "lr": a.lr})
    else:
        train_feats, dev_feats = feats
    train_labels = [torch.tensor(x["labels"], device=device) for x in train_items]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    best, best_state = -1.0, copy.deepcopy((head.state_dict(), None))  # with --epochs 0: the untrained head
    for epoch in range(a.epochs):
        order = torch.randperm(len(train_items), generator=g).tolist()
        losses = []
        steps = range(0, len(order), a.batch_size)
        for s in tqdm(steps, desc=f"epoch {epoch + 1}/{a.epochs}", leave=False, disable=None):
            idx = order[s : s + a.batch_size]
            if a.mode == "head":
                f = torch.cat([train_feats[i] for i in idx])  # (n_words, d)
            else:
                model.train()
                ids, chunk = next(batches(train_items, len(idx), pad_id, device, idx))
                f = word_states(model, ids, chunk, a.word_feature)
            loss = F.cross_entropy(head(f), torch.cat([train_labels[i] for i in idx]))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        msg = f"head lr {head_lr:g}, epoch {epoch + 1}/{a.epochs}: train loss {np.mean(losses):.4f}"
        if dev_items:
            feats_d = dev_feats if a.mode == "head" else sentence_features(model, dev_items, pad_id, device, "dev",
                                                                           a.word_feature)
            dev_f1 = score([x["tags"] for x in dev_items], predict(head, feats_d, dev_items))["f1"]
            msg += f", dev F1 {dev_f1:.4f}"
        tqdm.write(msg)
        if not dev_items or dev_f1 > best:
            best = dev_f1 if dev_items else best
            best_state = copy.deepcopy((head.state_dict(), model.state_dict() if a.mode == "full" else None))
    head.load_state_dict(best_state[0])
    if best_state[1] is not None:
        model.load_state_dict(best_state[1])
    return head, best


def select_head_lr(model, train_items, dev_items, a, pad_id, device):
    """Probe at every --head-lr and keep the one with the best dev F1 (the first, without a dev
    set). Returns the head and {"chosen": lr, "dev_f1": {lr: F1}}."""
    grid = [float(x) for x in a.head_lr.split(",")]
    feats = None
    if a.mode == "head":
        model.requires_grad_(False)
        feats = tuple(sentence_features(model, items, pad_id, device, f"features ({n})", a.word_feature)
                      for n, items in (("train", train_items), ("dev", dev_items)))
    start = copy.deepcopy(model.state_dict()) if a.mode == "full" and len(grid) > 1 else None
    tried = {}
    for lr in grid if dev_items else grid[:1]:
        if start is not None:
            model.load_state_dict(start)  # every lr fine-tunes the checkpoint, not the previous lr's model
        head, f1 = probe(model, train_items, dev_items, a, pad_id, device, lr, feats)
        tried[lr] = (f1, head.state_dict(), copy.deepcopy(model.state_dict()) if start is not None else None)
    chosen = max(tried, key=lambda lr: tried[lr][0])
    head.load_state_dict(tried[chosen][1])
    if start is not None:
        model.load_state_dict(tried[chosen][2])
    print(f"head lr {chosen:g} chosen on dev" if dev_items else f"no dev set: head lr {chosen:g}, the first of --head-lr")
    return head, {"chosen": chosen, "dev_f1": {f"{lr:g}": t[0] for lr, t in tried.items()}}


def load_checkpoint(path, device):
    try:
        ckpt = checkpoint.load(path, fallback=False)  # weights_only: a checkpoint file runs no code
    except checkpoint.CheckpointError as e:
        raise NERError(f"--ckpt {e}" + ("; train one first with train.py" if "not found" in str(e) else "")) from None
    model = Transformer(ModelArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    # the trimmed vocabulary's map travels in the checkpoint; older ones point at their data dir
    tok = datalib.Tokenizer(ckpt["data_meta"], ckpt["config"].get("data_dir"), ckpt.get("vocab_map"))
    return model.to(device), tok


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--ckpt", required=True, nargs="+", help="train.py checkpoint(s) (OUT/ckpt.pt, OUT/ckpt_step*.pt)")
    p.add_argument("--uner-dir", help="local UNER copy laid out as DIR/<code>/{train,dev,test}.iob2")
    p.add_argument("--download", action="store_true", help="fetch UNER v1 from GitHub into --cache-dir")
    p.add_argument("--cache-dir", default=str(datalib.CACHE_DIR / "uner"), help="where --download puts the files")
    p.add_argument("--train", required=True, help="training set code(s), comma-separated, or 'all'")
    p.add_argument("--mode", default="head", choices=["head", "full"], help="frozen backbone, or fine-tune all")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training sentences (the paper's 10)")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per step")
    p.add_argument("--lr", type=float, default=3e-5, help="backbone learning rate (--mode full; the paper's)")
    p.add_argument("--head-lr", default="1e-3,3e-3,1e-2",
                   help="learning rate(s) of the new linear head, comma-separated: the best on dev is kept")
    p.add_argument("--word-feature", default="first", choices=["first", "last", "mean"],
                   help="the state that represents a word: its first sub-token (the paper's), its last, or the mean")
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence; longer ones are cut")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda when available")
    p.add_argument("--seed", type=int, default=0, help="seeds the head's init and the sentence order")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--pred-dir", help="write DIR/<code>.conll (token gold predicted) per test set")
    a = p.parse_args(argv)
    try:
        if any(float(x) <= 0 for x in a.head_lr.split(",")):
            raise ValueError
    except ValueError:
        p.error(f"--head-lr {a.head_lr!r}: give positive numbers, comma-separated (e.g. 1e-3,3e-3)")
    return a


def main(argv=None):
    try:
        return run(parse(argv))
    except (NERError, datalib.DataError) as e:
        sys.exit(f"eval_ner.py: error: {e}")


def run(a):
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if not a.uner_dir and not a.download:
        raise NERError("say where UNER is: --uner-dir DIR (a local copy) or --download")
    sets = find_datasets(download_uner(a.cache_dir) if a.download else a.uner_dir)
    trainable = [c for c, s in sets.items() if "train" in s]
    codes = trainable if a.train == "all" else a.train.split(",")
    for c in codes:
        if c not in trainable:
            raise NERError(f"--train {c}: no train file for it; choose from {', '.join(trainable)}")
    out = []
    for ckpt in a.ckpt:
        dest = None
        if a.out:
            dest = Path(a.out) if len(a.ckpt) == 1 else Path(a.out).with_name(
                f"{Path(a.out).stem}_{Path(ckpt).parent.name}_{Path(ckpt).stem}{Path(a.out).suffix}")
        out.append(probe_checkpoint(ckpt, sets, codes, a, device, dest))
    return out[0] if len(out) == 1 else out


def probe_checkpoint(ckpt, sets, codes, a, device, dest):
    model, tok = load_checkpoint(ckpt, device)
    pad = tok.eot
    enc = lambda path: encode_set(read_iob2(path), tok, a.max_len)
    train_items = [x for c in codes for x in enc(sets[c]["train"])]
    dev_items = [x for c in codes if "dev" in sets[c] for x in enc(sets[c]["dev"])]
    for c in codes:
        if "draft" in sets[c]["train"].name:
            print(f"note: {c} trains on {sets[c]['train'].name}, a draft, not the released train file")
    print(f"{a.mode} probe of {ckpt} on {'+'.join(codes)} ({a.word_feature} sub-token): "
          f"{len(train_items):,} train / {len(dev_items):,} dev sentences")
    head, lr = select_head_lr(model, train_items, dev_items, a, pad, device)

    results = {}
    tests = {c: s["test"] for c, s in sets.items() if "test" in s}
    for c, path in tqdm(tests.items(), desc="test sets", disable=None):
        items = enc(path)
        preds = predict(head, sentence_features(model, items, pad, device, c, a.word_feature), items)
        results[c] = score([x["tags"] for x in items], preds)
        if a.pred_dir:
            Path(a.pred_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(a.pred_dir) / f"{c}.conll", "w") as f:
                for x, pr in zip(items, preds):
                    f.writelines(f"{w.replace(' ', '_')} {g} {q}\n" for w, g, q in zip(x["words"], x["tags"], pr))
                    f.write("\n")
    avg = float(np.mean([r["f1"] for r in results.values()]))
    print(f"\n{'test set':<14}{'P':>8}{'R':>8}{'F1':>8}{'entities':>10}")
    for c, r in results.items():
        print(f"{c:<14}{100 * r['precision']:8.2f}{100 * r['recall']:8.2f}{100 * r['f1']:8.2f}{r['n_gold']:>10,}")
    print(f"{'average F1':<30}{100 * avg:8.2f}")
    if dest:
        dest.write_text(json.dumps({"ckpt": str(ckpt), "mode": a.mode, "train": codes, "word_feature": a.word_feature,
                                    "head_lr": lr["chosen"], "head_lr_dev_f1": lr["dev_f1"],
                                    "results": results, "avg_f1": avg}, indent=2))
        print(f"wrote {dest}")
    return results, avg


if __name__ == "__main__":
    main()
