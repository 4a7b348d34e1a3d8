"""
First-order MAML (FOMAML) over self-supervised episodes, mixed into LM pretraining.

MAML in four lines. An episode has a support set S and a query set Q of the same task.
  inner loop:  phi_0 = theta;  phi_{i+1} = phi_i - alpha * grad L_S(phi_i)     (a few SGD steps)
  outer loss:  L_Q(phi_n): how well the *adapted* weights do on unseen examples of the task
  meta-grad:   d L_Q(phi_n) / d theta = (prod_i (I - alpha * H_S(phi_i))) grad L_Q(phi_n)
First-order MAML drops the Hessians H_S (no create_graph, so phi_n - theta is a constant), and
the meta-gradient is simply grad L_Q evaluated at phi_n, applied to theta. Parameters live in
dicts and every update is out of place (fast = {n: w - lr * g}), so torch.func.functional_call
runs the model with the fast weights while autograd routes grad L_Q back onto the originals.

Tasks (--task):
  smlmt  Subset-masked LM (Bansal et al. 2020): N word types, K support + Q query windows that
         contain each; the type is replaced by a mask id in its windows; classify which of the
         N words was masked. The head is ProtoMAML's (Triantafillou et al. 2020): w_c = 2 mu_c,
         b_c = -|mu_c|^2 from the support prototypes mu_c, so no head is carried over.
  lm     The older proposal: the inner loop is next-token cross-entropy on K sequences of one
         document, the outer loss on Q other sequences of the same document.
"""
import json

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm import tqdm

import data as datalib
from model import flops_per_token

STREAM_META, STREAM_VAL_EPISODES = 3, 5
VAL_SEED = 1234  # the fixed val episodes are the same for every run


def add_args(p):
    g = p.add_argument_group("meta-learning")
    g.add_argument("--meta", action="store_true", help="mix first-order MAML steps into pretraining")
    g.add_argument("--hybrid-ratio", type=float, default=0.5, help="fraction of steps that are meta steps")
    g.add_argument("--task", default="smlmt", choices=["smlmt", "lm"], help="episode kind")
    g.add_argument("--n-way", type=int, default=None,
                   help="SMLMT classes per episode (default: as many as make one LM batch of tokens, at most "
                        "32, the paper's; 32 at the default batch of 32 x 512)")
    g.add_argument("--k-shot", type=int, default=4, help="support windows per class (lm: support sequences)")
    g.add_argument("--n-query", type=int, default=4, help="query windows per class (lm: query sequences)")
    g.add_argument("--episode-len", type=int, default=64, help="tokens per episode window")
    g.add_argument("--inner-steps", type=int, default=10, help="SGD steps on the support set")
    g.add_argument("--inner-lr", type=float, default=0.01, help="inner-loop SGD learning rate")
    g.add_argument("--meta-weight", type=float, default=1.0,
                   help="scale of the query loss in a meta step (the optimiser's moments are shared with LM steps)")
    g.add_argument("--inner-params", default=None,
                   help="what adapts: head, top-K (last K blocks + head) or all (default: head; lm: top-1)")
    g.add_argument("--skip-top-words", type=int, default=100, help="SMLMT: skip the N most frequent token types")
    g.add_argument("--min-word-count", type=int, default=50, help="SMLMT: skip token types rarer than this")


# ----------------------------------------------------------------------------- the algorithm

def inner_loop(support_loss, fast, steps, lr):
    """`steps` SGD steps on support_loss(fast), out of place and first order: the gradients are
    taken without create_graph, so each update subtracts a constant and d fast / d theta = I."""
    for _ in range(steps):
        loss = support_loss(fast)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
    return fast


def adapted_names(model, spec):
    """Backbone parameter names the inner loop adapts: none (head), the last K blocks and the
    final norm (top-K), or every parameter (all)."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "head":
        return []
    if spec == "all":
        return names
    k = int(spec.split("-")[1])
    first = model.args.n_layer - k
    return [n for n in names if n == "norm.weight" or (n.startswith("layers.") and int(n.split(".")[1]) >= first)]


def proto_head(feats, labels, n_way):
    """ProtoMAML init: a linear head equal to the negative squared distance to each prototype
    (up to a per-example constant): -|h - mu|^2 = 2 mu.h - |mu|^2 - |h|^2."""
    mu = torch.zeros(n_way, feats.shape[1], device=feats.device, dtype=feats.dtype)
    mu = mu.index_add(0, labels, feats) / torch.bincount(labels, minlength=n_way).unsqueeze(1)  # (N, d)
    return {"head.w": 2 * mu, "head.b": -(mu * mu).sum(1)}


def features(model, params, x):
    # the final hidden state at the last position: in a causal model that is the only position
    # that has attended to every token of the window, the masked one included
    return functional_call(model, params, (x,), {"hidden": True})[:, -1]  # (n, d)


def episode_losses(model, ep, a, names, seen):
    """The support loss of a fast-weight dict, the starting fast weights, and a function giving
    the query logits and targets for fast weights. Shared by training and evaluation. The
    support loss keeps its last logits in `seen`, so reporting support accuracy needs no extra
    pass (and no host sync inside the inner loop)."""
    params = dict(model.named_parameters())

    def backbone(fast):
        return {**params, **{n: w for n, w in fast.items() if not n.startswith("head.")}}

    def scored(logits, y):
        seen["support_logits"] = logits.detach()
        return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten())

    if a.task == "lm":
        def lm_logits(fast, x):
            return functional_call(model, backbone(fast), (x,))[0]  # (n, L, V)

        support_loss = lambda fast: scored(lm_logits(fast, ep["xs"]), ep["ys"])
        return support_loss, {n: params[n] for n in names}, lambda fast: (lm_logits(fast, ep["xq"]), ep["yq"])

    with torch.no_grad():  # prototypes, and the support features themselves when only the head adapts
        fs = features(model, params, ep["xs"]).float()  # (N*K, d)
    fast = {n: params[n] for n in names} | {k: v.requires_grad_() for k, v in proto_head(fs, ep["ys"], a.n_way).items()}

    def head(f, fast):
        return f.float() @ fast["head.w"].T + fast["head.b"]  # (n, N)

    def support_loss(fast):  # head only: loop over the cached features, no backbone pass
        f = fs if not names else features(model, backbone(fast), ep["xs"])
        return scored(head(f, fast), ep["ys"])

    return support_loss, fast, lambda fast: (head(features(model, backbone(fast), ep["xq"]), fast), ep["yq"])


def accuracy(logits, y):
    return (logits.argmax(-1) == y).float().mean().item()


def meta_step(model, ep, a):
    """One FOMAML step: adapt on the support set, then backpropagate the query loss of the adapted
    weights. Leaves the meta-gradient in the .grad of the model's parameters. support_acc is
    measured at the last inner step."""
    seen = {}
    support_loss, fast, query = episode_losses(model, ep, a, adapted_names(model, a.inner_params), seen)
    fast = inner_loop(support_loss, fast, a.inner_steps, a.inner_lr)
    logits, y = query(fast)
    loss = F.cross_entropy(logits.flatten(0, -2).float(), y.flatten())
    (a.meta_weight * loss).backward()  # grad L_Q(phi_n) lands on theta: the first-order meta-gradient
    s_acc = accuracy(seen["support_logits"], ep["ys"]) if seen else float("nan")  # nan: no inner steps
    return loss.detach(), {"support_acc": s_acc, "query_acc": accuracy(logits.detach(), y)}


# ----------------------------------------------------------------------------- episodes

def word_types(tok, counts, skip_top, min_count):
    """Token ids in the frequency band that look like words (alphabetic after a leading space)."""
    order = np.argsort(-counts, kind="stable")
    band = [i for i in order[skip_top:] if counts[i] >= min_count]
    return np.array([i for i in band if i not in (tok.eot, tok.mask, tok.unk)
                     and tok.decode([i]).removeprefix(" ").isalpha()], dtype=np.int64)


def occurrence_index(tokens, types):
    """CSR index: positions[offsets[j]:offsets[j+1]] are the positions of token types[j]."""
    is_type = np.zeros(int(tokens.max()) + 1, dtype=bool)
    is_type[types[types < len(is_type)]] = True
    pos = np.flatnonzero(is_type[tokens])
    ids = np.asarray(tokens[pos], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos, ids = pos[order], ids[order]
    offsets = np.searchsorted(ids, np.append(types, np.iinfo(np.int64).max))
    return offsets, pos


def default_n_way(a):
    """Support + query tokens ~ one LM batch, so a meta step and an LM step see as many tokens;
    capped at the paper's 32 (which the default batch of 32 x 512 gives exactly)."""
    per_class = (a.k_shot + a.n_query) * a.episode_len
    return int(min(32, max(2, round(a.batch_size * a.block_size / per_class))))


class Episodes:
    """Samples training episodes from the train split (seeded by their number, so resuming and
    the LM stream are unaffected) and holds a fixed set of val episodes scored at every eval."""

    def __init__(self, a, data_dir, dmeta, train_tok, val_tok):
        if a.inner_params is None:
            a.inner_params = "top-1" if a.task == "lm" else "head"
        spec = a.inner_params
        if not (spec in ("head", "all") or (spec.startswith("top-") and spec[4:].isdigit())):
            raise SystemExit(f"train.py: error: --inner-params {spec!r}: use head, top-K (e.g. top-2) or all")
        if a.task == "lm" and spec == "head":
            raise SystemExit("train.py: error: --inner-params head needs --task smlmt (lm has no episode head); use top-K or all")
        self.a, self.tok = a, datalib.Tokenizer(dmeta, data_dir)
        self.splits = {"train": train_tok, "val": val_tok}
        self.n_per = a.k_shot + a.n_query
        if a.n_way is None:
            a.n_way = default_n_way(a)
        if a.task == "smlmt":
            self.index = {s: self._smlmt_index(data_dir, dmeta, s) for s in self.splits}
        else:  # documents long enough for K + Q sequences
            need = self.n_per * (a.episode_len + 1)
            self.index = {}
            for s, t in self.splits.items():
                bounds = np.append(-1, np.flatnonzero(np.asarray(t) == self.tok.eot))
                starts, lens = bounds[:-1] + 1, np.diff(bounds) - 1
                self.index[s] = (starts[lens >= need], lens[lens >= need])
                if len(self.index[s][0]) == 0:
                    raise SystemExit(f"train.py: error: {data_dir}/{s}.bin has no document of {need} tokens "
                                     "for --task lm; lower --episode-len, --k-shot or --n-query")
        rng = lambda i: np.random.default_rng([VAL_SEED, STREAM_VAL_EPISODES, i])
        self.val = [self._episode("val", rng(i)) for i in range(a.eval_episodes)]

    def _smlmt_index(self, data_dir, dmeta, split):
        a = self.a
        cache = data_dir / f"smlmt_{split}_top{a.skip_top_words}_min{a.min_word_count}.npz"
        if cache.exists():
            z = np.load(cache)
            types, offsets, pos = z["types"], z["offsets"], z["pos"]
        else:
            train = self.splits["train"]
            counts = np.bincount(np.asarray(train), minlength=dmeta["vocab_size"])
            types = word_types(self.tok, counts, a.skip_top_words, a.min_word_count)
            with tqdm(total=1, desc=f"SMLMT index ({split})", leave=False) as bar:
                offsets, pos = occurrence_index(np.asarray(self.splits[split]), types)
                bar.update()
            np.savez(cache, types=types, offsets=offsets, pos=pos)
        ok = np.flatnonzero(np.diff(offsets) >= self.n_per)  # types with enough windows for an episode
        if len(ok) < a.n_way:
            raise SystemExit(f"train.py: error: {data_dir}/{split}.bin has only {len(ok)} word types with "
                             f">= {self.n_per} occurrences; lower --n-way ({a.n_way}), --min-word-count or --skip-top-words")
        return types, offsets, pos, ok

    def _episode(self, split, rng):
        a, tokens = self.a, self.splits[split]
        L = a.episode_len
        if a.task == "lm":
            starts, lens = self.index[split]
            d = rng.integers(len(starts))
            s0 = starts[d] + rng.integers(lens[d] - self.n_per * (L + 1) + 1)
            seqs = np.asarray(tokens[s0 : s0 + self.n_per * (L + 1)], dtype=np.int64).reshape(self.n_per, L + 1)
            seqs = seqs[rng.permutation(self.n_per)]  # which sequences are support is random
            s, q = seqs[: a.k_shot], seqs[a.k_shot :]
            return {"xs": s[:, :-1], "ys": s[:, 1:], "xq": q[:, :-1], "yq": q[:, 1:]}
        types, offsets, pos, ok = self.index[split]
        chosen = rng.choice(ok, a.n_way, replace=False)
        labels = rng.permutation(a.n_way)  # fresh label order each episode: nothing to memorise
        windows = np.empty((a.n_way, self.n_per, L), dtype=np.int64)  # (N, K+Q, L)
        for c, j in enumerate(chosen):
            occ = pos[offsets[j] : offsets[j + 1]]
            for w, p in enumerate(rng.choice(occ, self.n_per, replace=False)):
                # the masked word sits inside the window (between 1/4 and 3/4), not at the end
                start = int(np.clip(p - rng.integers(L // 4, 3 * L // 4), 0, len(tokens) - L))
                win = np.asarray(tokens[start : start + L], dtype=np.int64)
                win[win == types[j]] = self.tok.mask
                windows[c, w] = win
        y = np.repeat(labels, self.n_per).reshape(a.n_way, self.n_per)  # (N, K+Q)
        flat = lambda t: t.reshape(-1, *t.shape[2:])  # (N, k, ...) -> (N*k, ...)
        return {"xs": flat(windows[:, : a.k_shot]), "ys": flat(y[:, : a.k_shot]),
                "xq": flat(windows[:, a.k_shot :]), "yq": flat(y[:, a.k_shot :]), "types": types[chosen]}

    def train_episode(self, i, device):
        ep = self._episode("train", np.random.default_rng([self.a.seed, STREAM_META, i]))
        return to_device(ep, device)

    def tokens_per_episode(self):
        n = self.n_per * (1 if self.a.task == "lm" else self.a.n_way)
        return n * self.a.episode_len

    def step_flops(self, margs):
        """FLOPs of one meta step, inner loop included: support forward (prototypes / cached
        features), inner steps (backbone forward+backward each unless only the head adapts),
        query forward+backward. Backwards are counted as full ones (an upper bound)."""
        a, L = self.a, self.a.episode_len
        lm = a.task == "lm"
        n_s, n_q = (a.k_shot, a.n_query) if lm else (a.n_way * a.k_shot, a.n_way * a.n_query)
        fwd = flops_per_token(margs, L, backward=False, lm_head=lm)
        full = flops_per_token(margs, L, backward=True, lm_head=lm)
        if a.inner_params == "head":  # smlmt only: one support pass, then a tiny head
            inner = fwd * n_s * L + a.inner_steps * 6 * n_s * a.n_way * margs.d_model
        else:
            inner = (0 if lm else fwd * n_s * L) + a.inner_steps * full * n_s * L
        return inner + full * n_q * L

    def describe(self):
        a = self.a
        if a.task == "lm":
            shape = f"lm, {a.k_shot} support + {a.n_query} query sequences of {a.episode_len} tokens from one document"
        else:
            shape = (f"smlmt {a.n_way}-way {a.k_shot}-shot {a.n_query}-query, windows of {a.episode_len} tokens, "
                     f"{len(self.index['train'][3]):,} eligible word types")
        return (f"{shape} = {self.tokens_per_episode():,} tokens/episode; inner loop {a.inner_steps} SGD steps "
                f"at lr {a.inner_lr} on {a.inner_params}")

    def evaluate(self, model, device, ctx):
        """Query accuracy on the fixed val episodes before and after the inner loop."""
        a = self.a
        names = adapted_names(model, a.inner_params)
        before, after = [], []
        for ep in tqdm(self.val, desc="val episodes", leave=False):
            ep = to_device(ep, device)
            with ctx, torch.enable_grad():
                support_loss, fast, query = episode_losses(model, ep, a, names, {})
                with torch.no_grad():
                    logits, y = query(fast)
                before.append(accuracy(logits, y))
                fast = {n: w.detach() for n, w in inner_loop(support_loss, fast, a.inner_steps, a.inner_lr).items()}
                with torch.no_grad():
                    logits, y = query(fast)
                after.append(accuracy(logits, y))
        return {"episode_acc_before": float(np.mean(before)), "episode_acc_after": float(np.mean(after))}


def to_device(ep, device):
    out = {k: torch.from_numpy(v).to(device) for k, v in ep.items() if k != "types"}
    out["tokens"] = sum(v.numel() for k, v in out.items() if k.startswith("x"))
    return out
