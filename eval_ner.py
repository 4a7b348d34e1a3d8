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
with a test file is scored with conlleval's entity-level micro P/R/F1 (uner.py).
Several --ckpt give one result each (--out r.json -> r_<run dir>_<checkpoint>.json).
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import data as datalib
from plumbing import checkpoint, config
from plumbing.errors import UserError
from plumbing.uner import LABELS, batches, download_uner, encode_set, find_datasets, read_iob2, score

# ----------------------------------------------------------------------------- probe

# Test sets reported apart from the average as well: Tagalog (TRG), the zero-shot cross-lingual set of
# the follow-up paper (arXiv 2509.02160), which trains on English (--train en_ewt)
APART = ("tl_trg",)

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
    best, best_state = -1.0, copy.deepcopy((head.state_dict(), None))
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
    except UserError as e:
        raise UserError(f"--ckpt {e}" + ("; train one first with train.py" if "not found" in str(e) else "")) from None
    model = checkpoint.build_model(ckpt)
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
    p.add_argument("--out", help="write the results as JSON here (several --ckpt: OUT.json -> "
                                 "OUT_<run dir>_<checkpoint>.json, one each)")
    p.add_argument("--pred-dir", help="write DIR/<code>.conll (token gold predicted) per test set")
    a = p.parse_args(argv)
    try:
        if any(float(x) <= 0 for x in a.head_lr.split(",")):
            raise ValueError
    except ValueError:
        p.error(f"--head-lr {a.head_lr!r}: give positive numbers, comma-separated (e.g. 1e-3,3e-3)")
    for k in ("epochs", "batch_size", "max_len"):  # --epochs 0 would score the untrained head as a result
        if getattr(a, k) < 1:
            raise UserError(f"--{k.replace('_', '-')} {getattr(a, k)}: must be at least 1")
    if a.lr <= 0:
        raise UserError(f"--lr {a.lr:g}: must be > 0")
    return a


def main(argv=None):
    try:
        return run(parse(argv))
    except UserError as e:
        sys.exit(f"eval_ner.py: error: {e}")


def run(a):
    device, _, _ = config.hardware(a.device, "float32")
    if not a.uner_dir and not a.download:
        raise UserError("say where UNER is: --uner-dir DIR (a local copy) or --download")
    sets = find_datasets(download_uner(a.cache_dir) if a.download else a.uner_dir)
    trainable = [c for c, s in sets.items() if "train" in s]
    codes = trainable if a.train == "all" else a.train.split(",")
    for c in codes:
        if c not in trainable:
            raise UserError(f"--train {c}: no train file for it; choose from {', '.join(trainable)}")
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
    apart = {c: results[c]["f1"] for c in APART if c in results}
    rest = [r["f1"] for c, r in results.items() if c not in apart]
    print(f"\n{'test set':<14}{'P':>8}{'R':>8}{'F1':>8}{'entities':>10}")
    for c, r in results.items():
        print(f"{c:<14}{100 * r['precision']:8.2f}{100 * r['recall']:8.2f}{100 * r['f1']:8.2f}{r['n_gold']:>10,}")
    print(f"{'average F1':<30}{100 * avg:8.2f}")
    for c, f1 in apart.items():  # zero-shot cross-lingual sets, reported apart as arXiv 2509.02160 does
        print(f"{c + ' F1 (apart)':<30}{100 * f1:8.2f}\n{'average F1 of the others':<30}{100 * np.mean(rest):8.2f}")
    if dest:
        dest.write_text(json.dumps({"ckpt": str(ckpt), "mode": a.mode, "train": codes, "word_feature": a.word_feature,
                                    "head_lr": lr["chosen"], "head_lr_dev_f1": lr["dev_f1"],
                                    "results": results, "avg_f1": avg, "apart": apart,
                                    "avg_f1_rest": float(np.mean(rest)) if rest else None}, indent=2))
        print(f"wrote {dest}")
    return results, avg


if __name__ == "__main__":
    main()
