"""
Episodes for meta-learning: one small builder per task, side by side, and what the inspector
(`python meta.py --data-dir DIR [episode flags]`) prints and checks.

Tasks (--task):
  smlmt  Subset-masked LM (Bansal et al. 2020): N word types, K support + Q query windows that
         contain each; the type is replaced by a mask id in its windows; classify which of the
         N words was masked. Every window has its word, by construction (the inspector checks).
  pico   What the paper's released trainer computes (pico-maml-train, trainer.py @ afbb6fb):
         B rows of text; K random positions shared by every row are masked in a support copy
         and one other shared position in a query copy; the classes are the (up to N) distinct
         ids found at the support positions, padded with random ids; a label outside the class
         set becomes class 0 (or is ignored with --pico-drop-outside).
  lm     The older proposal: K support and Q query sequences from one document; next-token loss.

Every episode is a pure function of (seed, stream, episode number), so resuming a run and the
LM stream of a hybrid run are unaffected by how many episodes were drawn.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data as datalib

STREAM_META, STREAM_VAL_EPISODES = 3, 5
VAL_SEED = 1234  # the fixed val episodes are the same for every run
TENSORS = ("xs", "ys", "xq", "yq", "ps", "pq", "classes")  # what moves to the device


# ----------------------------------------------------------------------------- SMLMT index

def word_types(tok, counts, skip_top, min_count):
    """Token ids in the frequency band that look like words (alphabetic after a leading space),
    most frequent first."""
    order = np.argsort(-counts, kind="stable")
    band = [i for i in order[skip_top:] if counts[i] >= min_count]
    return np.array([i for i in band if i not in (tok.eot, tok.mask, tok.unk)
                     and tok.decode([i]).removeprefix(" ").isalpha()], dtype=np.int64)


def occurrence_index(tokens, types):
    """CSR index: positions[offsets[j]:offsets[j+1]] are the positions of token types[j], for
    `types` in any order (word_types gives frequency order, not id order)."""
    rank = np.full(max(int(tokens.max()), int(types.max(initial=0))) + 1, -1, dtype=np.int64)
    rank[types] = np.arange(len(types))  # id -> its index in `types`
    r = rank[tokens]
    pos = np.flatnonzero(r >= 0)
    pos = pos[np.argsort(r[pos], kind="stable")]  # grouped in the order of `types`, ascending within
    offsets = np.concatenate([[0], np.cumsum(np.bincount(r[r >= 0], minlength=len(types)))])
    return offsets, pos


def cache_key(dmeta, a):
    """The SMLMT index depends on the exact tokens (fingerprint and split sizes) and the band."""
    what = [datalib.fingerprint(dmeta), dmeta.get("train_tokens"), dmeta.get("val_tokens"),
            dmeta.get("val_fraction"), dmeta.get("text_field"), a.skip_top_words, a.min_word_count]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


def smlmt_index(data_dir, dmeta, a, splits, tok, split):
    cache = Path(data_dir) / f"smlmt_{split}_{cache_key(dmeta, a)}.npz"
    if cache.exists():
        z = np.load(cache)
        types, offsets, pos = z["types"], z["offsets"], z["pos"]
    else:
        counts = np.bincount(np.asarray(splits["train"]), minlength=dmeta["vocab_size"])
        types = word_types(tok, counts, a.skip_top_words, a.min_word_count)
        with tqdm(total=1, desc=f"SMLMT index ({split})", leave=False, disable=None) as bar:
            offsets, pos = occurrence_index(np.asarray(splits[split]), types)
            bar.update()
        datalib.write_atomic(cache, lambda f: np.savez(f, types=types, offsets=offsets, pos=pos))
    return types, offsets, pos


# ----------------------------------------------------------------------------- the builders

def smlmt_episode(a, tokens, index, mask, rng):
    """N classes x (K + Q) windows of L tokens; each window holds its class's word at position
    p (between L/4 and 3L/4 when the corpus allows), and every occurrence of the word is masked."""
    types, offsets, pos, ok = index
    L, n_per = a.episode_len, a.k_shot + a.n_query
    chosen = rng.choice(ok, a.n_way, replace=False)
    labels = rng.permutation(a.n_way)  # fresh label order each episode: nothing to memorise
    windows = np.empty((a.n_way, n_per, L), dtype=np.int64)  # (N, K+Q, L)
    where = np.empty((a.n_way, n_per), dtype=np.int64)  # (N, K+Q) position of the sampled occurrence
    starts = np.empty((a.n_way, n_per), dtype=np.int64)
    for c, j in enumerate(chosen):
        occ = pos[offsets[j] : offsets[j + 1]]
        for w, p in enumerate(rng.choice(occ, n_per, replace=False)):
            start = int(np.clip(p - rng.integers(L // 4, 3 * L // 4), 0, len(tokens) - L))
            win = np.asarray(tokens[start : start + L], dtype=np.int64)
            win[win == types[j]] = mask
            windows[c, w], where[c, w], starts[c, w] = win, p - start, start
    y = np.repeat(labels, n_per).reshape(a.n_way, n_per)  # (N, K+Q)
    k = a.k_shot
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # (N, k, ...) -> (N*k, ...)
    return {"xs": flat(windows[:, :k]), "ys": flat(y[:, :k]), "ps": flat(where[:, :k]),
            "xq": flat(windows[:, k:]), "yq": flat(y[:, k:]), "pq": flat(where[:, k:]),
            "types": types[chosen], "starts_s": flat(starts[:, :k]), "starts_q": flat(starts[:, k:])}


def pico_episode(a, tokens, vocab_size, special, mask, rng):
    """The paper's task on B rows of T tokens (one LM batch): K shared support positions masked
    in one copy, one other shared position masked in another; classes = distinct support ids."""
    B, T, N = a.batch_size, a.block_size, a.n_way
    starts = rng.integers(0, len(tokens) - T, size=B)
    rows = np.stack([np.asarray(tokens[s : s + T], dtype=np.int64) for s in starts])  # (B, T)
    where = rng.choice(T, a.k_shot + 1, replace=False)
    ps, pq = np.sort(where[:-1]), where[-1:]  # (K,), (1,)
    ids = np.unique(rows[:, ps])
    if len(ids) > N:  # keep a random N of them
        ids = np.sort(rng.choice(ids, N, replace=False))
    elif len(ids) < N:  # pad with random ids that are neither present nor reserved
        free = np.setdiff1d(np.arange(vocab_size), np.concatenate([ids, special]))
        ids = np.concatenate([ids, rng.choice(free, N - len(ids), replace=False)])
    lookup = {int(t): c for c, t in enumerate(ids)}
    outside = -100 if a.pico_drop_outside else 0  # 0: the released code's clamp to class 0
    label = np.vectorize(lambda t: lookup.get(int(t), outside), otypes=[np.int64])
    xs, xq = rows.copy(), rows.copy()
    xs[:, ps], xq[:, pq] = mask, mask
    return {"xs": xs, "ys": label(rows[:, ps]).reshape(-1), "ps": ps,  # ys: (B*K,), row-major
            "xq": xq, "yq": label(rows[:, pq]).reshape(-1), "pq": pq, "classes": ids,
            "targets_s": rows[:, ps].reshape(-1), "targets_q": rows[:, pq].reshape(-1)}


def lm_episode(a, tokens, index, rng):
    """K support + Q query sequences of L+1 tokens from one document, in random roles."""
    starts, lens = index
    L, n_per = a.episode_len, a.k_shot + a.n_query
    d = rng.integers(len(starts))
    s0 = starts[d] + rng.integers(lens[d] - n_per * (L + 1) + 1)
    seqs = np.asarray(tokens[s0 : s0 + n_per * (L + 1)], dtype=np.int64).reshape(n_per, L + 1)  # (K+Q, L+1)
    seqs = seqs[rng.permutation(n_per)]  # which sequences are support is random
    s, q = seqs[: a.k_shot], seqs[a.k_shot :]
    return {"xs": s[:, :-1], "ys": s[:, 1:], "xq": q[:, :-1], "yq": q[:, 1:]}


def default_n_way(a):
    """smlmt: support + query tokens ~ one LM batch, so a meta step and an LM step see as many
    tokens; between 4 (chance 1/4; small batches get more tokens per episode than per LM
    step) and the paper's 32. pico: the released trainer's 32."""
    if a.task == "pico":
        return 32
    per_class = (a.k_shot + a.n_query) * a.episode_len
    return int(min(32, max(4, round(a.batch_size * a.block_size / per_class))))


class Episodes:
    """Samples training episodes from the train split and holds fixed val episodes."""

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok):
        self.a, self.tok, self.dmeta = a, datalib.Tokenizer(dmeta, data_dir), dmeta
        self.splits = {"train": train_tok, "val": val_tok}
        if a.n_way is None:
            a.n_way = default_n_way(a)
        self.index = {}
        for s, t in self.splits.items():
            if a.task == "smlmt":
                types, offsets, pos = smlmt_index(data_dir, dmeta, a, self.splits, self.tok, s)
                ok = np.flatnonzero(np.diff(offsets) >= a.k_shot + a.n_query)  # enough windows for an episode
                if len(ok) < a.n_way:
                    raise SystemExit(f"train.py: error: {data_dir}/{s}.bin has only {len(ok)} word types with >= "
                                     f"{a.k_shot + a.n_query} occurrences; lower --n-way ({a.n_way}), "
                                     "--min-word-count or --skip-top-words")
                self.index[s] = (types, offsets, pos, ok)
            elif a.task == "lm":  # documents long enough for K + Q sequences
                need = (a.k_shot + a.n_query) * (a.episode_len + 1)
                bounds = np.append(-1, np.flatnonzero(np.asarray(t) == self.tok.eot))
                starts, lens = bounds[:-1] + 1, np.diff(bounds) - 1
                self.index[s] = (starts[lens >= need], lens[lens >= need])
                if len(self.index[s][0]) == 0:
                    raise SystemExit(f"train.py: error: {data_dir}/{s}.bin has no document of {need} tokens "
                                     "for --task lm; lower --episode-len, --k-shot or --n-query")
            elif len(t) <= a.block_size or a.k_shot + 1 > a.block_size:
                raise SystemExit(f"train.py: error: --task pico needs {data_dir}/{s}.bin longer than --block-size "
                                 f"and --k-shot below --block-size")
        key = lambda i: [VAL_SEED, STREAM_VAL_EPISODES, i]
        self.val = [self.episode("val", np.random.default_rng(key(i))) | {"seed": episode_seed(key(i))}
                    for i in range(a.eval_episodes)]

    def episode(self, split, rng):
        a, tokens = self.a, self.splits[split]
        if a.task == "smlmt":
            return smlmt_episode(a, tokens, self.index[split], self.tok.mask, rng)
        if a.task == "pico":
            special = np.array([t for t in (self.tok.eot, self.tok.mask, self.tok.unk) if t is not None])
            return pico_episode(a, tokens, self.dmeta["vocab_size"], special, self.tok.mask, rng)
        return lm_episode(a, tokens, self.index[split], rng)

    def train_episode(self, i, device):
        key = [self.a.seed, STREAM_META, i]
        return to_device(self.episode("train", np.random.default_rng(key)) | {"seed": episode_seed(key)}, device)

    def tokens_per_episode(self):
        a = self.a
        if a.task == "pico":
            return 2 * a.batch_size * a.block_size  # a support copy and a query copy of the rows
        return (a.k_shot + a.n_query) * (1 if a.task == "lm" else a.n_way) * a.episode_len

    def describe(self):
        a = self.a
        if a.task == "lm":
            shape = f"lm, {a.k_shot} support + {a.n_query} query sequences of {a.episode_len} tokens from one document"
        elif a.task == "pico":
            shape = (f"pico {a.n_way} classes, {a.batch_size} rows x {a.block_size} tokens, {a.k_shot} support + 1 query "
                     f"positions, labels outside the classes {'ignored' if a.pico_drop_outside else 'set to class 0'}")
        else:
            shape = (f"smlmt {a.n_way}-way {a.k_shot}-shot {a.n_query}-query, windows of {a.episode_len} tokens, "
                     f"{len(self.index['train'][3]):,} eligible word types, feature {a.episode_feature}")
        return f"{shape} = {self.tokens_per_episode():,} tokens/episode"


def episode_seed(key):
    """An integer of the episode's own, for what the learner draws per episode (--inner-rank's
    directions) without touching any other random stream."""
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def to_device(ep, device):
    out = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in ep.items() if k in TENSORS}
    out["tokens"] = sum(v.numel() for k, v in out.items() if k in ("xs", "xq"))
    out["seed"] = ep.get("seed", 0)
    return out


# ----------------------------------------------------------------------------- the inspector

def check(eps, ep, split="train"):
    """(windows whose masked word is really there, windows): for smlmt, the corpus token at each
    window's recorded position is the class word and the window shows a mask there; for pico,
    the labels that name their true token (not clamped to class 0 or ignored)."""
    a = eps.a
    if a.task == "pico":
        ys, ts = np.concatenate([ep["ys"], ep["yq"]]), np.concatenate([ep["targets_s"], ep["targets_q"]])
        return int(sum(y >= 0 and ep["classes"][y] == t for y, t in zip(ys, ts))), len(ys)
    tokens, types = eps.splits[split], ep["types"]
    good = n = 0
    for x, y, p, s in ((ep["xs"], ep["ys"], ep["ps"], ep["starts_s"]), (ep["xq"], ep["yq"], ep["pq"], ep["starts_q"])):
        cls = {int(l): c for c, l in enumerate(ep["ys"][:: a.k_shot])}  # label -> class slot (types order)
        for xi, yi, pi, si in zip(x, y, p, s):
            good += int(xi[pi] == eps.tok.mask and tokens[si + pi] == types[cls[int(yi)]])
            n += 1
    return good, n


def show(eps, ep):
    a, dec = eps.a, lambda ids: eps.tok.decode(ids).replace("\n", " ")
    if a.task == "pico":
        words = [dec([t]) for t in ep["classes"]]
        print(f"classes ({len(words)}): {words}\nsupport positions {ep['ps'].tolist()}, query position {ep['pq'].tolist()}")
        for b, row in enumerate(ep["xs"][:4]):
            ys = ep["ys"][b * a.k_shot : (b + 1) * a.k_shot]
            print(f"  row {b}: {dec(row)!r}\n    support labels {ys.tolist()}, query label {int(ep['yq'][b])}")
        return
    for c, t in enumerate(ep["types"]):
        label = int(ep["ys"][c * a.k_shot])
        print(f"class {label}: {dec([t])!r}")
        for x in np.concatenate([ep["xs"][c * a.k_shot : (c + 1) * a.k_shot], ep["xq"][c * a.n_query : (c + 1) * a.n_query]]):
            print(f"    {dec(x)!r}")
