"""
smlmt: subset-masked LM (Bansal et al. 2020) with a ProtoMAML head (Triantafillou et al. 2020).

Episode: N word types; K support + Q query windows that contain each; the type is replaced by
a mask id in its windows; classify which of the N words was masked. Every window has its
word, by construction (tools/inspect_episodes.py checks).

Head: a linear head w_c = 2 mu_c, b_c = -|mu_c|^2 from the support prototypes, so logits =
-|h - mu_c|^2 up to a per-example constant. The features are scaled by a learned temperature
exp(log_scale), initialised so that |h|^2 ~ 1: raw squared distances between RMS-normalised
states are O(d), which made the first query losses 14-43 and taught the backbone to shrink
every feature (the collapse). As in Meta-Dataset's fo-Proto-MAML, the query gradient also
flows through the prototypes (--proto-grad); only the inner-loop gradients are constants.
"""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn

from plumbing.errors import UserError
from plumbing.tensors import fp32
from plumbing.word_index import smlmt_index
from tasks.base import Task, decoder, with_backbone


class SMLMT(Task):
    # 8 shots, not 4: with 4 the prototypes are already the best head the support set justifies
    # and the inner loop only sharpens the logits (a single temperature beats it); with 8,
    # adapting the head beats that temperature. inner_lr 2.0 in logit units (units below): the
    # sweep in results/README.md. n_way None: as many classes as make one LM batch of tokens
    DEFAULTS = {"inner_lr": 2.0, "inner_params": "head", "k_shot": 8, "n_way": None}
    PERSISTENT_HEAD = False
    VERIFIES = "masked word present in"

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--episode-feature", default="before-mask", choices=["before-mask", "mask", "last", "mean"],
                       help="the hidden state that represents a window (before-mask: the position that predicts the "
                            "masked word)")
        g.add_argument("--proto-grad", action=argparse.BooleanOptionalAction, default=True,
                       help="let the query gradient flow through the prototype initialisation (fo-Proto-MAML)")
        g.add_argument("--skip-top-words", type=int, default=100, help="skip the N most frequent token types")
        g.add_argument("--min-word-count", type=int, default=50, help="skip token types rarer than this")

    @classmethod
    def check(cls, a):
        for flag, least in (("skip_top_words", 0), ("min_word_count", 1)):
            if getattr(a, flag) < least:
                raise UserError(f"--{flag.replace('_', '-')} {getattr(a, flag)}: must be at least {least}")

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok, tok=None):
        super().__init__(a, data_dir, dmeta, train_tok, val_tok, tok)
        self.index = {}
        for s in self.splits:
            types, offsets, pos = smlmt_index(data_dir, dmeta, a, self.splits, self.tok, s)
            ok = np.flatnonzero(np.diff(offsets) >= a.k_shot + a.n_query)  # enough windows for an episode
            if len(ok) < a.n_way:
                raise UserError(f"{data_dir}/{s}.bin has only {len(ok)} word types with >= {a.k_shot + a.n_query} "
                                f"occurrences; lower --n-way ({a.n_way}), --k-shot, --n-query, --min-word-count or "
                                "--skip-top-words, prepare a larger corpus (or, for val.bin, a larger --val-fraction)"
                                + ("" if a.meta else ", or give --eval-episodes 0: a run without --meta needs "
                                   "episodes only to score them"))
            self.index[s] = (types, offsets, pos, ok)

    def episode(self, split, rng):
        """N classes x (K + Q) windows of L tokens; each window holds its class's word at position
        p (between L/4 and 3L/4 when the corpus allows), and every occurrence of the word is masked."""
        a, tokens, mask = self.a, self.splits[split], self.tok.mask
        types, offsets, pos, ok = self.index[split]
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
                "types": types[chosen], "starts_s": flat(starts[:, :k]), "starts_q": flat(starts[:, k:]),
                "len_s": window_end(where[:, :k], L), "len_q": window_end(where[:, k:], L)}

    # ------------------------------------------------------------------------- the head

    def make_head(self, d_model, vocab_size):
        # |h|^2 ~ d after the final RMSNorm; exp(log_scale) = 1/sqrt(d) makes it ~1
        return nn.ParameterDict({"log_scale": nn.Parameter(torch.tensor(-0.5 * math.log(d_model)))})

    def head_names(self, head):
        return ["head.w", "head.b"]  # rebuilt from prototypes every episode

    def start(self, model, head, ep, names):
        """The prototypes' head and the adapted backbone tensors. The support features are
        computed once here (with a graph under --proto-grad, so the query gradient reaches the
        backbone through the prototypes) and cached in the episode for the inner loop."""
        scale = head["log_scale"].exp()
        params = dict(model.named_parameters())
        with torch.set_grad_enabled(self.a.proto_grad and torch.is_grad_enabled()):
            fs = features(model, params, ep["xs"], ep["ps"], self.a.episode_feature, ep["len_s"]) * scale  # (N*K, d)
        fast = {n: params[n] for n in names} | proto_head(fs, ep["ys"], self.a.n_way)
        return fast, ep | {"params": params, "fs": fs, "scale": scale, "adapts_backbone": bool(names)}

    def support(self, model, fast, ep):  # head only: the cached features, no backbone pass
        if not ep["adapts_backbone"]:
            return logits(ep["fs"].detach(), fast), ep["ys"]
        f = features(model, with_backbone(ep, fast), ep["xs"], ep["ps"], self.a.episode_feature, ep["len_s"])
        return logits(f * ep["scale"].detach(), fast), ep["ys"]

    def query(self, model, fast, ep):
        f = features(model, with_backbone(ep, fast), ep["xq"], ep["pq"], self.a.episode_feature, ep["len_q"])
        return logits(f * ep["scale"], fast), ep["yq"]

    def units(self, ep):
        # The step in logit units. A step dw on the head weights moves a logit by f.dw, and the
        # gradient is itself proportional to f, so plain SGD moves logits by lr * |f|^2: a step
        # that shrinks or explodes as the learned temperature changes |f|. Dividing by the
        # support features' mean |f|^2 makes --inner-lr the size of the logit change.
        return {"head.w": 1.0 / ep["fs"].detach().pow(2).sum(1).mean()}

    # ------------------------------------------------------------------------- accounting and inspection

    def tokens_per_episode(self):
        a = self.a
        return (a.k_shot + a.n_query) * a.n_way * a.episode_len

    def flops_per_episode(self, flops):
        # windows counted at their full length, though the features stop at the mask: an upper bound
        a, L = self.a, self.a.episode_len
        n_s, n_q = a.n_way * a.k_shot, a.n_way * a.n_query
        fwd, full = flops(L, backward=False), flops(L, backward=True)
        return {"start": (full if a.proto_grad else fwd) * n_s * L, "start_nograd": fwd * n_s * L,
                "support": full * n_s * L, "query": full * n_q * L}

    def describe(self):
        a = self.a
        return (f"smlmt {a.n_way}-way {a.k_shot}-shot {a.n_query}-query, windows of {a.episode_len} tokens, "
                f"{len(self.index['train'][3]):,} eligible word types, feature {a.episode_feature} = "
                f"{self.tokens_per_episode():,} tokens/episode")

    def show(self, ep):
        a, dec = self.a, lambda ids: self.tok.decode(ids).replace("\n", " ")
        for c, t in enumerate(ep["types"]):
            print(f"class {int(ep['ys'][c * a.k_shot])}: {dec([t])!r}")
            for x in np.concatenate([ep["xs"][c * a.k_shot : (c + 1) * a.k_shot],
                                     ep["xq"][c * a.n_query : (c + 1) * a.n_query]]):
                print(f"    {dec(x)!r}")

    def verify(self, ep, split="train"):
        """Each window has a mask at its recorded position, and the corpus word there is its class's."""
        tokens, good, n = self.splits[split], 0, 0
        cls = {int(y): c for c, y in enumerate(ep["ys"][:: self.a.k_shot])}  # label -> class slot (types order)
        for x, y, p, s in ((ep["xs"], ep["ys"], ep["ps"], ep["starts_s"]), (ep["xq"], ep["yq"], ep["pq"], ep["starts_q"])):
            for xi, yi, pi, si in zip(x, y, p, s):
                good += int(xi[pi] == self.tok.mask and tokens[si + pi] == ep["types"][cls[int(yi)]])
                n += 1
        return good, n


def proto_head(feats, labels, n_way):
    """ProtoMAML init: a linear head equal to the negative squared distance to each prototype
    (up to a per-example constant): -|h - mu|^2 = 2 mu.h - |mu|^2 - |h|^2."""
    mu = torch.zeros(n_way, feats.shape[1], device=feats.device, dtype=feats.dtype)
    count = torch.zeros(n_way, device=feats.device, dtype=feats.dtype).index_add(0, labels, torch.ones_like(feats[:, 0]))
    mu = mu.index_add(0, labels, feats) / count.unsqueeze(1)  # (N, d); bincount would read max(labels) back to the host
    return {"head.w": 2 * mu, "head.b": -(mu * mu).sum(1)}


def logits(f, fast):
    with fp32(f.device):
        return f @ fast["head.w"].T + fast["head.b"]  # (n, N)


def window_end(p, L):
    """How much of a window the features at the mask need, from the positions p (numpy, on the
    host, so that the GPU is never asked for max(p)): the decoder is causal, so the state at p
    (or p - 1) never sees the tokens after p, and the windows can end there. SMLMT puts p in
    [L/4, 3L/4), so this drops about a quarter of every window. Rounded up to 16 tokens so that
    --compile sees few shapes."""
    return int(min(L, -(-(int(np.max(p)) + 1) // 16) * 16))


def features(model, params, x, p, kind, length=None):
    """One hidden state per window, after the final norm, in float32. `length` (window_end):
    where the windows may end for the kinds read at the mask; None reads whole windows."""
    if kind in ("mask", "before-mask") and length:
        x = x[:, :length]  # (n, L') with L' > max p
    h = decoder(model, params, x, hidden=True)  # (n, L', d)
    rows = torch.arange(len(x), device=x.device)
    if kind == "last":  # the only position that has seen the whole window
        f = h[:, -1]
    elif kind == "mean":
        f = h.mean(1)
    elif kind == "mask":  # has seen the mask and the left context
        f = h[rows, p]
    else:  # before-mask: the state the LM uses to predict the (masked) word
        f = h[rows, (p - 1).clamp(min=0)]
    return f.float()  # (n, d)
