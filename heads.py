"""
The episode heads of meta.py: what an episode's support and query sets are scored with, as
functions of the fast weights the inner loop adapts.

Per task (the episodes themselves are built in episodes.py):
  smlmt  ProtoMAML (Triantafillou et al. 2020): a linear head w_c = 2 mu_c, b_c = -|mu_c|^2 from
         the support prototypes, so logits = -|h - mu_c|^2 up to a per-example constant. The
         features are scaled by a learned temperature exp(log_scale), initialised so that
         |h|^2 ~ 1: raw squared distances between RMS-normalised states are O(d), which made
         the first query losses 14-43 and taught the backbone to shrink every feature (the
         collapse). As in Meta-Dataset's fo-Proto-MAML, the query gradient also flows through
         the prototypes (--proto-grad); only the inner-loop gradients are constants.
  pico   The paper's released trainer: a persistent MLP d -> 128 -> 128 -> 128 -> vocab, read at
         the masked position, its logits sliced to the episode's class ids; the inner loop
         adapts only this head, on backbone features computed once per episode.
  lm     No head: the inner and outer losses are next-token cross-entropy.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call


def make_head(a, d_model, vocab_size):
    """The meta-learned parameters outside the decoder; trained by the outer optimiser and
    saved in the checkpoint. Initialised from their own generator, so the decoder's init and a
    vanilla run's random stream are untouched."""
    if a.task == "smlmt":  # |h|^2 ~ d after the final RMSNorm; exp(log_scale) = 1/sqrt(d) makes it ~1
        return nn.ParameterDict({"log_scale": nn.Parameter(torch.tensor(-0.5 * math.log(d_model)))})
    if a.task == "pico":  # the released trainer's classifier: ReLU MLP, Xavier weights
        gen = torch.Generator().manual_seed(a.seed)
        dims = [d_model, 128, 128, 128, vocab_size]
        layers = []
        for i, (m, n) in enumerate(zip(dims, dims[1:])):
            lin = nn.Linear(m, n)
            nn.init.xavier_uniform_(lin.weight, generator=gen)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()] if i < len(dims) - 2 else [lin]
        return nn.Sequential(*layers)
    return nn.ParameterDict()


def proto_head(feats, labels, n_way):
    """ProtoMAML init: a linear head equal to the negative squared distance to each prototype
    (up to a per-example constant): -|h - mu|^2 = 2 mu.h - |mu|^2 - |h|^2."""
    mu = torch.zeros(n_way, feats.shape[1], device=feats.device, dtype=feats.dtype)
    mu = mu.index_add(0, labels, feats) / torch.bincount(labels, minlength=n_way).unsqueeze(1)  # (N, d)
    return {"head.w": 2 * mu, "head.b": -(mu * mu).sum(1)}


_call = functional_call


def use_compile(backend="inductor"):
    """--compile: the decoder's episode passes go through torch.compile too. Compiling
    functional_call itself makes the weights graph inputs, so the new fast-weight tensors of
    every inner step reuse one graph per shape (no recompiles) and autograd runs through it.
    backend=None goes back to plain functional_call (the tests use the cheap "aot_eager")."""
    global _call
    _call = torch.compile(functional_call, backend=backend) if backend else functional_call


def decoder(model, params, x, hidden=False):
    """The decoder run with the weights in params: (logits, loss), or hidden states if hidden."""
    return _call(model, params, (x,), {"hidden": hidden})


def features(model, params, x, p, kind):
    """One hidden state per window, after the final norm, in float32."""
    if kind in ("mask", "before-mask"):
        # the decoder is causal, so the state at p (or p - 1) never sees the tokens after p:
        # the windows can end there. SMLMT puts p in [L/4, 3L/4), so this drops about a
        # quarter of every window. Rounded up to 16 tokens so that --compile sees few shapes
        x = x[:, : min(x.shape[1], -(-(int(p.max()) + 1) // 16) * 16)]  # (n, L') with L' > max p
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


def fp32(device):
    # episode heads run in float32 even under bf16 autocast: their logits are small differences
    # of large dot products, which bf16 (8 bits of mantissa) gets wrong by whole units
    return torch.autocast(torch.device(device).type, enabled=False)


def ce(logits, y):
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(), ignore_index=-100)  # -100: pico's ignored labels


def episode_fns(model, head, ep, a, names):
    """(support(fast), starting fast weights, query(fast), units), shared by training and
    evaluation; support and query give (logits, targets) for fast weights. Fast-weight names
    starting with "head." belong to the episode head, the others to the decoder. units: a
    multiplier of the inner step per tensor (default 1), see below."""
    params = dict(model.named_parameters())
    backbone = lambda fast: {**params, **{n: w for n, w in fast.items() if not n.startswith("head.")}}

    if a.task == "lm":
        logits = lambda fast, x: decoder(model, backbone(fast), x)[0]  # (n, L, V)
        return (lambda fast: (logits(fast, ep["xs"]), ep["ys"]), {n: params[n] for n in names},
                lambda fast: (logits(fast, ep["xq"]), ep["yq"]), {})

    if a.task == "pico":
        mlp = {n: w for n, w in head.named_parameters()}

        def feats(fast, x, p):
            return decoder(model, backbone(fast), x, hidden=True)[:, p].flatten(0, 1).float()  # (B*K, d)

        def logits(f, fast):
            with fp32(f.device):
                return functional_call(head, {n[5:]: w for n, w in fast.items() if n.startswith("head.")},
                                       (f,))[:, ep["classes"]]  # (n, N)

        with torch.no_grad():  # the backbone is frozen in the inner loop: its features once per episode
            fs = feats(params, ep["xs"], ep["ps"])
        fast = {n: params[n] for n in names} | {"head." + n: w for n, w in mlp.items()}
        support = lambda fast: (logits(fs if not names else feats(fast, ep["xs"], ep["ps"]), fast), ep["ys"])
        return support, fast, lambda fast: (logits(feats(fast, ep["xq"], ep["pq"]), fast), ep["yq"]), {}

    kind, scale = a.episode_feature, head["log_scale"].exp()
    with torch.set_grad_enabled(a.proto_grad and torch.is_grad_enabled()):
        fs = features(model, params, ep["xs"], ep["ps"], kind) * scale  # (N*K, d), scaled
    fast = {n: params[n] for n in names} | proto_head(fs, ep["ys"], a.n_way)

    def logits(f, fast):
        with fp32(f.device):
            return f @ fast["head.w"].T + fast["head.b"]  # (n, N)

    def support(fast):  # head only: the cached features, no backbone pass
        f = fs.detach() if not names else features(model, backbone(fast), ep["xs"], ep["ps"], kind) * scale.detach()
        return logits(f, fast), ep["ys"]

    # The step in logit units. A step dw on the head weights moves a logit by f.dw, and the
    # gradient is itself proportional to f, so plain SGD moves logits by lr * |f|^2: a step that
    # shrinks or explodes as the learned temperature changes |f|. Dividing by the support
    # features' mean |f|^2 makes --inner-lr the size of the logit change, whatever the scale.
    units = {"head.w": 1.0 / fs.detach().pow(2).sum(1).mean()}
    return support, fast, lambda fast: (logits(features(model, backbone(fast), ep["xq"], ep["pq"], kind) * scale, fast),
                                        ep["yq"]), units


def accuracy(logits, y):
    keep = y != -100
    return ((logits.argmax(-1) == y) & keep).sum().item() / max(1, keep.sum().item())
