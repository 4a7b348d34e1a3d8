"""
pico: what the paper's released trainer computes (pico-maml-train, trainer.py @ afbb6fb).

Episode: B rows of text (one LM batch); K random positions shared by every row are masked in a
support copy and one other shared position in a query copy; the classes are the (up to N)
distinct ids found at the support positions, padded with random ids; a label outside the
class set becomes class 0 (or is ignored with --pico-drop-outside).

Head: a persistent MLP d -> 128 -> 128 -> 128 -> vocab, read at the masked positions, its
logits sliced to the episode's class ids; with --inner-params head the inner loop adapts only
this head, on backbone features computed once per episode.
"""
import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from plumbing.errors import UserError
from plumbing.tensors import fp32
from tasks.base import Task, decoder, with_backbone


class Pico(Task):
    DEFAULTS = {"inner_lr": 0.1, "inner_params": "head", "k_shot": 4, "n_way": 32}  # the released trainer's 32 classes
    VERIFIES = "labels that name their own token (the others: class 0, or ignored):"

    @classmethod
    def add_flags(cls, g):
        g.add_argument("--pico-drop-outside", action="store_true",
                       help="ignore labels outside the class set instead of clamping them to class 0")

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok, tok=None):
        super().__init__(a, data_dir, dmeta, train_tok, val_tok, tok)
        for s, t in self.splits.items():
            if len(t) <= a.block_size or a.k_shot + 1 > a.block_size:
                raise UserError(f"--task pico needs {data_dir}/{s}.bin longer than --block-size and --k-shot below "
                                "--block-size")

    def episode(self, split, rng):
        """The paper's task on B rows of T tokens: K shared support positions masked in one copy,
        one other shared position masked in another; classes = distinct support ids."""
        a, tokens, mask = self.a, self.splits[split], self.tok.mask
        special = np.array([t for t in (self.tok.eot, self.tok.mask, self.tok.unk) if t is not None])
        B, T, N = a.batch_size, a.block_size, a.n_way
        starts = rng.integers(0, len(tokens) - T, size=B)
        rows = np.stack([np.asarray(tokens[s : s + T], dtype=np.int64) for s in starts])  # (B, T)
        where = rng.choice(T, a.k_shot + 1, replace=False)
        ps, pq = np.sort(where[:-1]), where[-1:]  # (K,), (1,)
        ids = np.unique(rows[:, ps])
        if len(ids) > N:  # keep a random N of them
            ids = np.sort(rng.choice(ids, N, replace=False))
        elif len(ids) < N:  # pad with random ids that are neither present nor reserved
            free = np.setdiff1d(np.arange(self.dmeta["vocab_size"]), np.concatenate([ids, special]))
            ids = np.concatenate([ids, rng.choice(free, N - len(ids), replace=False)])
        lookup = {int(t): c for c, t in enumerate(ids)}
        outside = -100 if a.pico_drop_outside else 0  # 0: the released code's clamp to class 0
        label = np.vectorize(lambda t: lookup.get(int(t), outside), otypes=[np.int64])
        xs, xq = rows.copy(), rows.copy()
        xs[:, ps], xq[:, pq] = mask, mask
        return {"xs": xs, "ys": label(rows[:, ps]).reshape(-1), "ps": ps,  # ys: (B*K,), row-major
                "xq": xq, "yq": label(rows[:, pq]).reshape(-1), "pq": pq, "classes": ids,
                "targets_s": rows[:, ps].reshape(-1), "targets_q": rows[:, pq].reshape(-1)}

    # ------------------------------------------------------------------------- the head

    def make_head(self, d_model, vocab_size):
        """The released trainer's classifier: a ReLU MLP with Xavier weights, initialised from its
        own generator, so the decoder's init and a vanilla run's random stream are untouched."""
        gen = torch.Generator().manual_seed(self.a.seed)
        dims = [d_model, 128, 128, 128, vocab_size]
        layers = []
        for i, (m, n) in enumerate(zip(dims, dims[1:])):
            lin = nn.Linear(m, n)
            nn.init.xavier_uniform_(lin.weight, generator=gen)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()] if i < len(dims) - 2 else [lin]
        return nn.Sequential(*layers)

    def head_names(self, head):
        return ["head." + n for n, _ in head.named_parameters()]

    def start(self, model, head, ep, names):
        """The MLP's weights and the adapted backbone tensors. The backbone is frozen in a
        head-only inner loop, so its support features are computed once, here."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            fs = feats(model, params, ep["xs"], ep["ps"])
        fast = {n: params[n] for n in names} | {"head." + n: w for n, w in head.named_parameters()}
        return fast, ep | {"params": params, "fs": fs, "head": head, "adapts_backbone": bool(names)}

    def support(self, model, fast, ep):
        f = feats(model, with_backbone(ep, fast), ep["xs"], ep["ps"]) if ep["adapts_backbone"] else ep["fs"]
        return logits(ep["head"], f, fast, ep["classes"]), ep["ys"]

    def query(self, model, fast, ep):
        f = feats(model, with_backbone(ep, fast), ep["xq"], ep["pq"])
        return logits(ep["head"], f, fast, ep["classes"]), ep["yq"]

    def units(self, ep):
        return {}

    # ------------------------------------------------------------------------- accounting and inspection

    def tokens_per_episode(self):
        return 2 * self.a.batch_size * self.a.block_size  # a support copy and a query copy of the rows

    def flops_per_episode(self, flops):
        B, L = self.a.batch_size, self.a.block_size
        fwd, full = flops(L, backward=False), flops(L, backward=True)
        return {"start": fwd * B * L, "start_nograd": fwd * B * L, "support": full * B * L, "query": full * B * L}

    def describe(self):
        a = self.a
        return (f"pico {a.n_way} classes, {a.batch_size} rows x {a.block_size} tokens, {a.k_shot} support + 1 query "
                f"positions, labels outside the classes {'ignored' if a.pico_drop_outside else 'set to class 0'} = "
                f"{self.tokens_per_episode():,} tokens/episode")

    def show(self, ep):
        a, dec = self.a, lambda ids: self.tok.decode(ids).replace("\n", " ")
        words = [dec([t]) for t in ep["classes"]]
        print(f"classes ({len(words)}): {words}\nsupport positions {ep['ps'].tolist()}, query position {ep['pq'].tolist()}")
        for b, row in enumerate(ep["xs"][:4]):
            ys = ep["ys"][b * a.k_shot : (b + 1) * a.k_shot]
            print(f"  row {b}: {dec(row)!r}\n    support labels {ys.tolist()}, query label {int(ep['yq'][b])}")

    def verify(self, ep, split="train"):
        """The labels that name their own token (not clamped to class 0 or ignored)."""
        ys, ts = np.concatenate([ep["ys"], ep["yq"]]), np.concatenate([ep["targets_s"], ep["targets_q"]])
        return int(sum(y >= 0 and ep["classes"][y] == t for y, t in zip(ys, ts))), len(ys)


def feats(model, params, x, p):
    return decoder(model, params, x, hidden=True)[:, p].flatten(0, 1).float()  # (B, K, d) -> (B*K, d)


def logits(head, f, fast, classes):
    with fp32(f.device):
        return functional_call(head, {n[5:]: w for n, w in fast.items() if n.startswith("head.")}, (f,))[:, classes]  # (n, N)

