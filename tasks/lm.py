"""
lm: the older proposal. K support and Q query sequences from one document; the inner and outer
losses are next-token cross-entropy, and there is no episode head.
"""
import numpy as np
import torch.nn as nn

from plumbing.errors import UserError
from tasks.base import Task, decoder, with_backbone


class LM(Task):
    DEFAULTS = {"inner_lr": 0.1, "inner_params": "all", "k_shot": 4, "n_way": None}
    CLASSIFIES = False

    @classmethod
    def check(cls, a):
        if a.task == cls.name() and a.inner_params == "head":
            raise UserError("--inner-params head needs --task smlmt or pico (lm has no episode head); use top-K or all")

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok, tok=None):
        super().__init__(a, data_dir, dmeta, train_tok, val_tok, tok)
        need = (a.k_shot + a.n_query) * (a.episode_len + 1)
        self.index = {}
        for s, t in self.splits.items():  # documents long enough for K + Q sequences
            bounds = np.append(-1, np.flatnonzero(np.asarray(t) == self.tok.eot))
            starts, lens = bounds[:-1] + 1, np.diff(bounds) - 1
            self.index[s] = (starts[lens >= need], lens[lens >= need])
            if len(self.index[s][0]) == 0:
                raise UserError(f"{data_dir}/{s}.bin has no document of {need} tokens for --task lm; lower "
                                "--episode-len, --k-shot or --n-query")

    def episode(self, split, rng):
        """K support + Q query sequences of L+1 tokens from one document, in random roles."""
        a, tokens = self.a, self.splits[split]
        starts, lens = self.index[split]
        L, n_per = a.episode_len, a.k_shot + a.n_query
        d = rng.integers(len(starts))
        s0 = starts[d] + rng.integers(lens[d] - n_per * (L + 1) + 1)
        seqs = np.asarray(tokens[s0 : s0 + n_per * (L + 1)], dtype=np.int64).reshape(n_per, L + 1)  # (K+Q, L+1)
        seqs = seqs[rng.permutation(n_per)]  # which sequences are support is random
        s, q = seqs[: a.k_shot], seqs[a.k_shot :]
        return {"xs": s[:, :-1], "ys": s[:, 1:], "xq": q[:, :-1], "yq": q[:, 1:]}

    def start(self, model, head, ep, names):
        params = dict(model.named_parameters())
        return {n: params[n] for n in names}, ep | {"params": params}

    def support(self, model, fast, ep):
        return decoder(model, with_backbone(ep, fast), ep["xs"]), ep["ys"]  # (n, L, V) logits

    def query(self, model, fast, ep):
        return decoder(model, with_backbone(ep, fast), ep["xq"]), ep["yq"]

    def units(self, ep):
        return {}

    def make_head(self, d_model, vocab_size):
        return nn.ParameterDict()  # next tokens through the decoder's own output layer: no head

    def head_names(self, head):
        return []

    def tokens_per_episode(self):
        return (self.a.k_shot + self.a.n_query) * self.a.episode_len

    def flops_per_episode(self, flops):
        a, L = self.a, self.a.episode_len
        full = flops(L, backward=True, lm_head=True)  # the inner and outer losses go through the output layer
        return {"start": 0, "start_nograd": 0, "support": full * a.k_shot * L, "query": full * a.n_query * L}

    def describe(self):
        a = self.a
        return (f"lm, {a.k_shot} support + {a.n_query} query sequences of {a.episode_len} tokens from one document = "
                f"{self.tokens_per_episode():,} tokens/episode")
